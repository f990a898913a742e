package vcard_test

import (
	"testing"

	"github.com/keyport/keyport/cardlink/vcard"
	"github.com/keyport/keyport/gp"
)

// FuzzCardProcess feeds arbitrary APDU sequences to a module and checks that
// it never panics and always answers at least a status word. The first byte
// picks how far the module is opened first, so the fuzzer reaches the
// management commands: 0 nothing; 1 ISD session at level 00 (commands go in
// clear); 2 ISD session at level 33 with every fuzzed command wrapped by the
// host; 3 ARA-M selected with a level-00 session; 4 logical channels 1 and
// 2 open, ARA-M selected on 1 and an ISD session at level 00 on 2, the
// basic channel with nothing selected. The rest is a sequence of APDUs,
// each preceded by its length byte.
func FuzzCardProcess(f *testing.F) {
	seeds := [][]byte{
		h("00" + "0D00A4040008A000000151000000" + "05" + "00A4040000"),
		h("01" + "0680E6200000" + "2580E60C002507A000000151535008A00000015153504107F00102030405010380400006C90481020370"),
		h("02" + "0780F28002024F00" + "0580CA00E000" + "0580CA9F7F00"),
		h("03" + "3880E2900033F031E22FE11E4F06FFFFFFFFFFFFC114E46872F28B350B7E1F140DE535C2A8D5804F0BE3E30DD00101DB080000000000000001" + "0580CAFF4000"),
		h("01" + "0A80E2880005" + "00B9020000"),
		h("00" + "04FFFFFFFF" + "01A4" + "0084"),
		h("02" + "4A80D8308146318811108AEF4B6F9C4C0AD05BBAA8BBC43C8D7F03EE72CB8811104C08B47ABF0C939F5D6FF7E2A35B16A00349B6D588111058CA28775AC649577DA2BF18186478B503FB9292"),
		// An OTA trigger (ENVELOPE SMS-PP DOWNLOAD, default OTA keys,
		// counter 1), FETCH of the OPEN CHANNEL, TERMINAL RESPONSE.
		h("00" + "8280C200007CD17A8202838186039111228B6F440A9144022143657FF6622110410000005D02700000581516191212000000AEEB02DFC5DAC93B29C5DD190B0C4A7A434EE523DFB9D2533915C2A98A25B67D8DC97EDE2367AAA94BDA3E559A39E7BAA9CF6E286866564526B7F7BCC2B9CEEE6BA473A359615A665E6A5C6CBCC98A4600" +
			"058012000000" + "11801400000C810301400182028281830100"),
		// MANAGE CHANNEL open, SELECT and GET DATA on the new channel, close.
		h("00" + "050070000001" + "0D01A4040008A000000151000000" + "0581CA9F7F00" + "0400708001" + "0581CA9F7F00"),
		// Open a given number, further class coding, close from itself.
		h("00" + "0400700009" + "0E45A4040009A00000015141434C00" + "05C5CAFF4000" + "05C5CAFF6000" + "0445708000"),
		// Mode 4: commands on channels 1 and 2 and on closed ones.
		h("04" + "0581CADF2000" + "0582F2400002" + "0482CA00E0" + "0583CA9F7F00" + "050170000001" + "0400708000"),
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(fuzzOne)
}

func fuzzOne(t *testing.T, in []byte) {
	{
		card, err := vcard.New(vcard.DefaultEID, vcard.Config{TestOTAKeys: true})
		if err != nil {
			t.Fatal(err)
		}
		hst := processHost(t, card)
		mode := byte(0)
		if len(in) > 0 {
			mode, in = in[0]%5, in[1:]
		}
		switch mode {
		case 1:
			hst.selectAID(vcard.ISDAID)
			hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x00)
		case 2:
			hst.selectAID(vcard.ISDAID)
			hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x33)
		case 3:
			hst.selectAID(vcard.ARAMAID)
			hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x00)
		case 4:
			hst.onChannel(hst.openChannel()).selectAID(vcard.ARAMAID)
			two := hst.onChannel(hst.openChannel())
			two.selectAID(vcard.ISDAID)
			two.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x00)
		}
		for len(in) > 0 {
			n := int(in[0])
			in = in[1:]
			n = min(n, len(in))
			apdu := in[:n]
			in = in[n:]
			if mode == 2 && hst.sess != nil {
				if c, err := gp.ParseCommand(apdu); err == nil {
					if w, err := hst.sess.Wrap(c); err == nil {
						apdu = w.Bytes()
					}
				}
			}
			rsp := card.Process(apdu)
			if len(rsp) < 2 {
				t.Fatalf("answer %X to %X has no status word", rsp, apdu)
			}
		}
	}
}
