package vcard

import (
	"bytes"
	"fmt"

	"github.com/keyport/keyport/gp"
)

// maxAppData bounds the data objects one application may hold (6A84 beyond).
const maxAppData = 16 * 1024

// newKey is a decrypted key ready to go into a key set.
type newKey struct {
	kvn, kid byte
	value    []byte
}

// decryptKey decrypts a key sent under the session's static Key-DEK (AmdD
// 7.2.1, 7.3) and checks its length and, when given, its KCV (GPCS B.6).
// A wrong KCV answers 6982 (GPCS 11.8.3.2, PROTOCOLS.md §1.4).
func (c *Card) decryptKey(keyType byte, keyLen int, ct, kcv []byte) ([]byte, gp.SW) {
	if keyType != gp.KeyTypeAES {
		return nil, gp.SWIncorrectData // SCP03 key sets hold AES keys only
	}
	if keyLen != 16 && keyLen != 24 && keyLen != 32 {
		return nil, gp.SWIncorrectData
	}
	if len(ct) != (keyLen+15)/16*16 {
		return nil, gp.SWIncorrectData
	}
	if len(c.ch.sessDEK) == 0 {
		return nil, gp.SWConditionsNotSatisfied
	}
	k, err := gp.DecryptKey(c.ch.sessDEK, ct, keyLen)
	if err != nil {
		return nil, gp.SWIncorrectData
	}
	if len(kcv) > 0 {
		want, err := gp.KCV(k)
		if err != nil || len(kcv) != 3 || !bytes.Equal(kcv, want) {
			return nil, gp.SWSecurityNotSatisfied
		}
	}
	return k, gp.SWOK
}

// applyKeys writes decrypted keys into sd's key sets after checking that
// every touched key set ends up with keys of one length (AmdD 6.1). A key set
// that is created, or whose three keys are all written by this one command,
// gets its sequence and failure counters reset (AmdD 6.2.2.1). replace, if
// not zero, is a key set that the first key set written replaces (PUT KEY
// with a new KVN).
func applyKeys(sd *app, keys []newKey, replace byte) gp.SW {
	// Work on copies so a rejected command changes nothing.
	work := map[byte]*keySet{}
	var order []byte
	get := func(kvn byte) *keySet {
		if ks, found := work[kvn]; found {
			return ks
		}
		src := sd.keySet(kvn)
		if replace != 0 && src == nil {
			src = sd.keySet(replace)
		}
		ks := &keySet{KVN: kvn}
		if src != nil {
			ks.Counter, ks.Failures = src.Counter, src.Failures
			for _, k := range src.Keys {
				ks.Keys = append(ks.Keys, &key{ID: k.ID, Type: k.Type, Value: bytes.Clone(k.Value)})
			}
		}
		work[kvn] = ks
		order = append(order, kvn)
		return ks
	}
	written := map[byte]map[byte]bool{}
	for _, nk := range keys {
		ks := get(nk.kvn)
		if k := ks.key(nk.kid); k != nil {
			k.Type, k.Value = keyTypeAES, bytes.Clone(nk.value)
		} else {
			ks.Keys = append(ks.Keys, &key{ID: nk.kid, Type: keyTypeAES, Value: bytes.Clone(nk.value)})
		}
		if written[nk.kvn] == nil {
			written[nk.kvn] = map[byte]bool{}
		}
		written[nk.kvn][nk.kid] = true
	}
	for _, kvn := range order {
		ks := work[kvn]
		n := -1
		for _, k := range ks.Keys {
			if n >= 0 && len(k.Value) != n {
				return gp.SWIncorrectData
			}
			n = len(k.Value)
		}
		created := sd.keySet(kvn) == nil && (replace == 0 || sd.keySet(replace) == nil)
		if created || (written[kvn][1] && written[kvn][2] && written[kvn][3]) {
			ks.Counter, ks.Failures = 0, 0
		}
	}
	for _, kvn := range order {
		ks := work[kvn]
		sortKeys(ks)
		switch {
		case sd.keySet(kvn) != nil:
			*sd.keySet(kvn) = *ks
		case replace != 0 && sd.keySet(replace) != nil:
			*sd.keySet(replace) = *ks // same position: the default key set stays first
			replace = 0
		default:
			sd.KeySets = append(sd.KeySets, ks)
		}
	}
	return gp.SWOK
}

func sortKeys(ks *keySet) {
	for i := 1; i < len(ks.Keys); i++ {
		for j := i; j > 0 && ks.Keys[j].ID < ks.Keys[j-1].ID; j-- {
			ks.Keys[j], ks.Keys[j-1] = ks.Keys[j-1], ks.Keys[j]
		}
	}
}

// putKey answers PUT KEY (GPCS 11.8, AmdD 7.2): P1 is the key set replaced
// (0 adds one), P2 the first key identifier (b8: several keys). Keys come
// encrypted under the session's static Key-DEK. The answer is the new KVN
// and the KCV of each key (GPCS 11.8.3).
func (c *Card) putKey(sd *app, cmd gp.Command) rsp {
	if !c.authenticated() {
		return status(gp.SWSecurityNotSatisfied)
	}
	pk, err := gp.ParsePutKey(cmd)
	if err != nil {
		return status(gp.SWIncorrectData)
	}
	if pk.More {
		return status(gp.SWIncorrectP1P2) // key sets come in one command here
	}
	if pk.NewKVN >= 0x01 && pk.NewKVN <= 0x0F && sd == c.st.isd() {
		return c.putOTAKey(sd, pk)
	}
	if pk.FirstKID < 1 || int(pk.FirstKID)+len(pk.Keys)-1 > 3 {
		return status(gp.SWIncorrectP1P2)
	}
	if pk.NewKVN == 0 || pk.NewKVN > 0x7F {
		return status(gp.SWIncorrectData)
	}
	switch {
	case pk.OldKVN == 0:
		// Add: the KVN must be new and the key set complete.
		if sd.keySet(pk.NewKVN) != nil {
			return status(gp.SWIncorrectData)
		}
		if pk.FirstKID != 1 || len(pk.Keys) != 3 {
			return status(gp.SWIncorrectData)
		}
	default:
		if sd.keySet(pk.OldKVN) == nil {
			return status(gp.SWReferencedDataNotFound)
		}
		if pk.NewKVN != pk.OldKVN && sd.keySet(pk.NewKVN) != nil {
			return status(gp.SWIncorrectData)
		}
	}
	var keys []newKey
	resp := []byte{pk.NewKVN}
	for i, kc := range pk.Keys {
		n := kc.Length
		if n == 0 {
			n = len(kc.Encrypted) // GPCS Table 11-71 form: the block is the key
		}
		k, sw := c.decryptKey(kc.Type, n, kc.Encrypted, kc.KCV)
		if sw != gp.SWOK {
			return status(sw)
		}
		kcv, _ := gp.KCV(k)
		resp = append(resp, kcv...)
		keys = append(keys, newKey{kvn: pk.NewKVN, kid: pk.FirstKID + byte(i), value: k})
	}
	var replace byte
	if pk.OldKVN != 0 && pk.OldKVN != pk.NewKVN {
		replace = pk.OldKVN
	}
	if sw := applyKeys(sd, keys, replace); sw != gp.SWOK {
		return status(sw)
	}
	c.dirty = true
	return ok(resp)
}

// storeData answers STORE DATA (GPCS 11.11) for the SD itself or, after
// INSTALL [for personalization], for the application named there. DGI
// structure (P1 b5b4 = 01): key loading with DGI 00B9 + 8113 (GPCS 11.11.4;
// keys under the session's static Key-DEK, AmdD 7.3), other DGIs are kept
// as data groups. BER-TLV structure (10) or none (00): data objects kept by
// tag, readable with GET DATA inside a secure channel.
func (c *Card) storeData(sd *app, cmd gp.Command) rsp {
	if !c.authenticated() {
		return status(gp.SWSecurityNotSatisfied)
	}
	target := sd
	if c.ch.perso != nil {
		target = c.st.find(c.ch.perso)
		if target == nil {
			return status(gp.SWReferencedDataNotFound)
		}
	}
	if int(cmd.P2) != c.ch.block {
		c.ch.block, c.ch.pending = 0, nil
		return status(gp.SWIncorrectP1P2) // blocks are numbered from 00 (GPCS 11.11.2.2)
	}
	last := cmd.P1&gp.StoreDataLast != 0
	var sw gp.SW
	switch cmd.P1 & 0x18 {
	case gp.StoreDataDGI:
		sw = c.storeDGIs(target, cmd.Data, last)
	case gp.StoreDataBERTLV, 0x00:
		if cmd.P1&gp.StoreDataEncrypted == gp.StoreDataEncrypted {
			sw = gp.SWIncorrectP1P2
		} else {
			sw = storeObjects(target, cmd.Data)
		}
	default:
		sw = gp.SWIncorrectP1P2
	}
	if sw != gp.SWOK {
		c.ch.block, c.ch.pending = 0, nil
		return status(sw)
	}
	c.dirty = true
	if last {
		c.ch.block, c.ch.pending, c.ch.perso = 0, nil, nil
	} else {
		c.ch.block++
	}
	return ok(nil)
}

func (c *Card) storeDGIs(target *app, data []byte, last bool) gp.SW {
	all := append(bytes.Clone(c.ch.pending), data...)
	c.ch.pending = nil
	dgis, err := gp.ParseDGIs(all)
	if err != nil {
		return gp.SWIncorrectData
	}
	// A key template may end one block and its key start the next.
	if n := len(dgis); n > 0 && dgis[n-1].Tag == 0x00B9 {
		if last {
			return gp.SWIncorrectData
		}
		c.ch.pending = dgis[n-1].Bytes()
		dgis = dgis[:n-1]
	}
	var keys []newKey
	var objs []gp.DGI
	groups := map[string][]byte{}
	for i := 0; i < len(dgis); i++ {
		d := dgis[i]
		if gp.IsDataObject(d.Tag) && target.isSD() {
			// An SD's provider data objects (dataobj.go); for an
			// application they are personalization data groups.
			objs = append(objs, d)
			continue
		}
		switch d.Tag {
		case 0x00B9:
			if i+1 >= len(dgis) || dgis[i+1].Tag != 0x8113 {
				return gp.SWIncorrectData
			}
			loads, err := gp.ParseKeyLoadDGIs(append(d.Bytes(), dgis[i+1].Bytes()...))
			if err != nil || len(loads) != 1 {
				return gp.SWIncorrectData
			}
			i++
			kl := loads[0]
			if !target.isSD() || kl.KID < 1 || kl.KID > 3 || kl.KVN == 0 || kl.KVN > 0x7F {
				return gp.SWIncorrectData
			}
			k, sw := c.decryptKey(kl.Type, kl.Length, kl.Encrypted, kl.KCV)
			if sw != gp.SWOK {
				return sw
			}
			keys = append(keys, newKey{kvn: kl.KVN, kid: kl.KID, value: k})
		case 0x8113:
			return gp.SWIncorrectData
		default:
			groups[fmt.Sprintf("DGI%04X", d.Tag)] = d.Data
		}
	}
	if sw := checkObjects(target, groups); sw != gp.SWOK {
		return sw
	}
	putData, sw := c.checkProviderData(target, objs)
	if sw != gp.SWOK {
		return sw
	}
	if len(keys) > 0 {
		if sw := applyKeys(target, keys, 0); sw != gp.SWOK {
			return sw
		}
	}
	putData()
	putObjects(target, groups)
	return gp.SWOK
}

// storeObjects keeps each top-level BER-TLV object of data under its tag.
func storeObjects(target *app, data []byte) gp.SW {
	tlvs, err := gp.ParseAllTLV(data)
	if err != nil {
		return gp.SWIncorrectData
	}
	objs := map[string][]byte{}
	for _, t := range tlvs {
		objs[t.Tag.String()] = t.Value
	}
	if sw := checkObjects(target, objs); sw != gp.SWOK {
		return sw
	}
	putObjects(target, objs)
	return gp.SWOK
}

// checkObjects reports 6A84 when storing objs would exceed maxAppData.
func checkObjects(target *app, objs map[string][]byte) gp.SW {
	size := 0
	for k, v := range target.Data {
		if _, replaced := objs[k]; !replaced {
			size += len(v)
		}
	}
	for _, v := range objs {
		size += len(v)
	}
	if size > maxAppData {
		return gp.SWNotEnoughMemory
	}
	return gp.SWOK
}

func putObjects(target *app, objs map[string][]byte) {
	if len(objs) == 0 {
		return
	}
	if target.Data == nil {
		target.Data = map[string]hexBytes{}
	}
	for k, v := range objs {
		target.Data[k] = hexBytes(bytes.Clone(v))
	}
}
