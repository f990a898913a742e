package hsm

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"

	"github.com/miekg/pkcs11"

	"github.com/keyport/keyport"
)

// p11 lists the PKCS#11 functions keyport calls, so that the surface is
// visible in one place and tests can interpose on it. *pkcs11.Ctx
// implements it.
type p11 interface {
	GetSlotList(tokenPresent bool) ([]uint, error)
	GetTokenInfo(slotID uint) (pkcs11.TokenInfo, error)
	InitToken(slotID uint, pin string, label string) error
	InitPIN(sh pkcs11.SessionHandle, pin string) error
	OpenSession(slotID uint, flags uint) (pkcs11.SessionHandle, error)
	CloseSession(sh pkcs11.SessionHandle) error
	CloseAllSessions(slotID uint) error
	GetSessionInfo(sh pkcs11.SessionHandle) (pkcs11.SessionInfo, error)
	Login(sh pkcs11.SessionHandle, userType uint, pin string) error
	Logout(sh pkcs11.SessionHandle) error
	CreateObject(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute) (pkcs11.ObjectHandle, error)
	CopyObject(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, temp []*pkcs11.Attribute) (pkcs11.ObjectHandle, error)
	DestroyObject(sh pkcs11.SessionHandle, oh pkcs11.ObjectHandle) error
	GetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) ([]*pkcs11.Attribute, error)
	FindObjectsInit(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute) error
	FindObjects(sh pkcs11.SessionHandle, max int) ([]pkcs11.ObjectHandle, bool, error)
	FindObjectsFinal(sh pkcs11.SessionHandle) error
	EncryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error
	Encrypt(sh pkcs11.SessionHandle, message []byte) ([]byte, error)
	SignInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error
	Sign(sh pkcs11.SessionHandle, message []byte) ([]byte, error)
	GenerateKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, temp []*pkcs11.Attribute) (pkcs11.ObjectHandle, error)
	GenerateKeyPair(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, public, private []*pkcs11.Attribute) (pkcs11.ObjectHandle, pkcs11.ObjectHandle, error)
	WrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, wrappingkey, key pkcs11.ObjectHandle) ([]byte, error)
	UnwrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, unwrappingkey pkcs11.ObjectHandle, wrappedkey []byte, a []*pkcs11.Attribute) (pkcs11.ObjectHandle, error)
	DeriveKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, basekey pkcs11.ObjectHandle, a []*pkcs11.Attribute) (pkcs11.ObjectHandle, error)
}

// modules is the process-wide registry of loaded PKCS#11 modules. C_Initialize
// runs once per module per process, and C_Finalize never: it would end every
// session of every user of the module in this process (PKCS#11 v2.40 base
// §5.4), including other *HSM values and tests running in parallel.
var modules struct {
	sync.Mutex
	byPath map[string]*pkcs11.Ctx
}

// loadModule returns the initialized context for the module at path.
func loadModule(path string) (*pkcs11.Ctx, error) {
	path = filepath.Clean(path)
	modules.Lock()
	defer modules.Unlock()
	if c, ok := modules.byPath[path]; ok {
		return c, nil
	}
	c := pkcs11.New(path)
	if c == nil {
		return nil, fmt.Errorf("cannot load PKCS#11 module %s (missing file or not a PKCS#11 library)", path)
	}
	// CKF_OS_LOCKING_OK (miekg's default): the module may be called from
	// several threads, one session per thread at a time.
	if err := c.Initialize(); err != nil {
		if rv, ok := ckr(err); !ok || rv != pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
			c.Destroy()
			return nil, fmt.Errorf("C_Initialize %s: %w", path, err)
		}
	}
	if modules.byPath == nil {
		modules.byPath = map[string]*pkcs11.Ctx{}
	}
	modules.byPath[path] = c
	return c, nil
}

// findSlot returns the one slot whose token matches u. Slot IDs may change
// when a token is (re)initialized, so tokens are matched by label or serial.
func findSlot(p p11, u *URI) (uint, error) {
	slots, err := p.GetSlotList(true)
	if err != nil {
		return 0, fmt.Errorf("C_GetSlotList: %w", err)
	}
	var found []uint
	for _, slot := range slots {
		if u.HasSlotID && slot != u.SlotID {
			continue
		}
		ti, err := p.GetTokenInfo(slot)
		if err != nil || ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			continue
		}
		if (u.Token == "" || ti.Label == u.Token) &&
			(u.Serial == "" || ti.SerialNumber == u.Serial) &&
			(u.Manufacturer == "" || ti.ManufacturerID == u.Manufacturer) &&
			(u.Model == "" || ti.Model == u.Model) {
			found = append(found, slot)
		}
	}
	switch len(found) {
	case 0:
		return 0, fmt.Errorf("%w (%s): %w", ErrTokenNotFound, u, keyport.ErrUnavailable)
	case 1:
		return found[0], nil
	}
	return 0, fmt.Errorf("%d tokens match %s: add 'serial' to choose one", len(found), u)
}

// tokenInitMu serializes InitToken in this process: two calls must not pick
// the same free slot.
var tokenInitMu sync.Mutex

// InitToken initializes a new token labelled label on the module's first
// free slot (a slot whose token is not initialized, as SoftHSM always
// offers) and sets its user PIN. It refuses with keyport.ErrConflict if a
// token with that label exists.
//
// It runs inside this process on purpose: SoftHSM reads its token directory
// at C_Initialize, so a token that softhsm2-util creates afterwards is not
// seen by a process that has already initialized the module.
func InitToken(modulePath, label, soPIN, userPIN string) error {
	if label == "" || len(label) > 32 {
		return errors.New("hsm: init token: the label must have 1 to 32 bytes")
	}
	if soPIN == "" || userPIN == "" {
		return errors.New("hsm: init token: SO PIN and user PIN are required")
	}
	c, err := loadModule(modulePath)
	if err != nil {
		return opError("init token", err)
	}
	tokenInitMu.Lock()
	defer tokenInitMu.Unlock()
	if _, err := findSlot(c, &URI{Token: label}); err == nil {
		return fmt.Errorf("hsm: init token: a token labelled %q exists: %w", label, keyport.ErrConflict)
	}
	slots, err := c.GetSlotList(true)
	if err != nil {
		return opError("init token", err)
	}
	free, ok := uint(0), false
	for _, s := range slots {
		ti, err := c.GetTokenInfo(s)
		if err == nil && ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			free, ok = s, true
			break
		}
	}
	if !ok {
		return errors.New("hsm: init token: the module has no free slot")
	}
	// PKCS#11 v2.40 base §5.5 C_InitToken, then §5.6 C_InitPIN as the SO.
	if err := c.InitToken(free, soPIN, label); err != nil {
		return opError("init token: C_InitToken", err)
	}
	slot, err := findSlot(c, &URI{Token: label})
	if err != nil {
		return opError("init token", err)
	}
	sh, err := c.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return opError("init token: C_OpenSession", err)
	}
	defer c.CloseSession(sh)
	if err := c.Login(sh, pkcs11.CKU_SO, soPIN); err != nil {
		return opError("init token: SO login", err)
	}
	defer c.Logout(sh)
	if err := c.InitPIN(sh, userPIN); err != nil {
		return opError("init token: C_InitPIN", err)
	}
	return nil
}
