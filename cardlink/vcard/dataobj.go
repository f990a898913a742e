package vcard

import (
	"bytes"
	"fmt"

	"github.com/keyport/keyport/gp"
)

// MaxProviderData bounds the provider data objects one SSD holds, values
// counted (6A84 beyond).
const MaxProviderData = 4096

// levelData is the security level provider data needs both ways (C-MAC,
// C-DEC, R-MAC, R-ENC).
const levelData = gp.LevelCMAC | gp.LevelCDEC | gp.LevelRMAC | gp.LevelRENC

// dataObjectKey is the state file's key of provider data object dgi.
func dataObjectKey(dgi uint16) string { return fmt.Sprintf("%04X", dgi) }

// providerDataSW says whether the channel's session may store or read sd's
// provider data objects (gp.DataObjectFirst..Last; see gp/dataobj.go):
// only in a session opened on a supplementary SD itself, at level 33, with
// the SD PERSONALIZED. 6982 below level 33 (GPCS 10.2.3: security status
// not satisfied), 6985 for the ISD, a command forwarded by INSTALL [for
// personalization] or an SD not (yet) PERSONALIZED.
func (c *Card) providerDataSW(sd *app) gp.SW {
	if !c.authenticated() || c.ch.sess.Level()&levelData != levelData {
		return gp.SWSecurityNotSatisfied
	}
	if sd == c.st.isd() || c.ch.perso != nil || !sd.isSD() || sd.LCS&^LockedBit != SDPersonalized {
		return gp.SWConditionsNotSatisfied
	}
	return gp.SWOK
}

// checkProviderData checks the provider data objects of one STORE DATA
// block: each at most gp.MaxDataObject bytes (6A80), all of them together
// at most MaxProviderData (6A84). It returns what stores them, to be
// called once every other part of the block has passed, so that a refused
// block stores nothing.
func (c *Card) checkProviderData(sd *app, objs []gp.DGI) (func(), gp.SW) {
	if len(objs) == 0 {
		return func() {}, gp.SWOK
	}
	if sw := c.providerDataSW(sd); sw != gp.SWOK {
		return nil, sw
	}
	next := map[string][]byte{}
	for _, d := range objs {
		if err := gp.CheckDataObject(d); err != nil {
			return nil, gp.SWIncorrectData
		}
		next[dataObjectKey(d.Tag)] = d.Data
	}
	size := 0
	for k, v := range sd.Objects {
		if _, replaced := next[k]; !replaced {
			size += len(v)
		}
	}
	for _, v := range next {
		size += len(v)
	}
	if size > MaxProviderData {
		return nil, gp.SWNotEnoughMemory
	}
	return func() {
		if sd.Objects == nil {
			sd.Objects = map[string]hexBytes{}
		}
		for k, v := range next {
			sd.Objects[k] = hexBytes(bytes.Clone(v))
		}
	}, gp.SWOK
}

// getProviderData answers GET DATA of a provider data object: the DGI as
// stored, 6A88 when there is none.
func (c *Card) getProviderData(sd *app, dgi uint16) rsp {
	if sw := c.providerDataSW(sd); sw != gp.SWOK {
		return status(sw)
	}
	v, found := sd.Objects[dataObjectKey(dgi)]
	if !found {
		return status(gp.SWReferencedDataNotFound)
	}
	return ok(gp.DGI{Tag: dgi, Data: v}.Bytes())
}
