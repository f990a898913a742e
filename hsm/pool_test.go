package hsm_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/hsm"
	"github.com/keyport/keyport/hsm/hsmtest"
)

// countingP11 counts C_Login and C_OpenSession calls; while down is set it
// answers as a removed token would, and breakNextSign fails one C_Sign as a
// closed session would.
type countingP11 struct {
	hsm.P11
	logins        atomic.Int32
	opened        atomic.Int32
	down          atomic.Bool
	breakNextSign atomic.Bool
}

func (c *countingP11) Login(sh pkcs11.SessionHandle, userType uint, pin string) error {
	c.logins.Add(1)
	return c.P11.Login(sh, userType, pin)
}

func (c *countingP11) OpenSession(slot, flags uint) (pkcs11.SessionHandle, error) {
	if c.down.Load() {
		return 0, pkcs11.Error(pkcs11.CKR_TOKEN_NOT_PRESENT)
	}
	c.opened.Add(1)
	return c.P11.OpenSession(slot, flags)
}

func (c *countingP11) GetSessionInfo(sh pkcs11.SessionHandle) (pkcs11.SessionInfo, error) {
	if c.down.Load() {
		return pkcs11.SessionInfo{}, pkcs11.Error(pkcs11.CKR_DEVICE_REMOVED)
	}
	return c.P11.GetSessionInfo(sh)
}

func (c *countingP11) Sign(sh pkcs11.SessionHandle, msg []byte) ([]byte, error) {
	if c.down.Load() {
		return nil, pkcs11.Error(pkcs11.CKR_DEVICE_REMOVED)
	}
	if c.breakNextSign.CompareAndSwap(true, false) {
		return nil, pkcs11.Error(pkcs11.CKR_SESSION_HANDLE_INVALID)
	}
	return c.P11.Sign(sh, msg)
}

func openCounting(t *testing.T, uri string) (*hsm.HSM, *countingP11, error) {
	t.Helper()
	var c *countingP11
	h, err := hsm.OpenWithHook(ctx, hsm.Config{URI: uri}, func(p hsm.P11) hsm.P11 {
		c = &countingP11{P11: p}
		return c
	})
	if h != nil {
		t.Cleanup(func() { h.Close() })
	}
	return h, c, err
}

func TestWrongPINFailsWithErrPINIncorrectAfterExactlyOneLogin(t *testing.T) {
	tok := hsmtest.NewToken(t)
	uri := fmt.Sprintf("pkcs11:token=%s?module-path=%s&pin-value=wrong-%s", tok.Label, hsmtest.ModulePath, tok.UserPIN)
	_, c, err := openCounting(t, uri)
	if !errors.Is(err, hsm.ErrPINIncorrect) {
		t.Fatalf("err = %v, want ErrPINIncorrect", err)
	}
	if errors.Is(err, keyport.ErrUnavailable) {
		t.Fatal("a wrong PIN must not look like an outage (callers would retry)")
	}
	if n := c.logins.Load(); n != 1 {
		t.Fatalf("%d C_Login calls, want exactly 1", n)
	}
	if strings.Contains(err.Error(), tok.UserPIN) {
		t.Fatal("the error shows the PIN")
	}
}

func TestOpenLogsInOnceForManySessions(t *testing.T) {
	h, c, err := openCounting(t, hsmtest.New(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Init(ctx); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if _, err := h.AuditMAC(ctx, []byte("x")); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := c.logins.Load(); n != 1 {
		t.Fatalf("%d C_Login calls, want 1", n)
	}
}

func TestOpenFailsWithErrTokenNotFoundForAnUnknownLabel(t *testing.T) {
	hsmtest.New(t) // SoftHSM configured for this process
	_, err := hsm.Open(ctx, hsm.Config{URI: "pkcs11:token=no-such-token?module-path=" + hsmtest.ModulePath + "&pin-value=1"})
	if !errors.Is(err, hsm.ErrTokenNotFound) || !errors.Is(err, keyport.ErrUnavailable) {
		t.Fatalf("err = %v", err)
	}
}

func TestOpenFailsClearlyForAMissingModule(t *testing.T) {
	_, err := hsm.Open(ctx, hsm.Config{URI: "pkcs11:token=k?module-path=/nonexistent/lib.so&pin-value=1"})
	if err == nil || !strings.Contains(err.Error(), "cannot load PKCS#11 module /nonexistent/lib.so") {
		t.Fatalf("err = %v", err)
	}
}

func TestOperationsRecoverAfterAllSessionsWereClosedBehindThePool(t *testing.T) {
	h, c, err := openCounting(t, hsmtest.New(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Init(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.CreateBatchKEK(ctx, "b1"); err != nil {
		t.Fatal(err)
	}
	firstKeys(t, h, testEID, testAID) // fills the pool and the handle caches
	if _, err := h.SignES256(ctx, []byte("x")); err != nil {
		t.Fatal(err)
	}
	// Closing every session also logs the user out (PKCS#11 v2.40 base §5.6).
	if err := h.CloseAllSessionsForTest(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.SignES256(ctx, []byte("x")); err != nil {
		t.Fatalf("sign after C_CloseAllSessions: %v", err)
	}
	firstKeys(t, h, testEID, testAID)
	if _, err := h.AuditMAC(ctx, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := h.Health(ctx); err != nil {
		t.Fatal(err)
	}
	if n := c.logins.Load(); n != 2 {
		t.Fatalf("%d C_Login calls, want 2 (start-up and after the reset)", n)
	}
}

func TestOperationsFailWithErrUnavailableWhileTheTokenIsGoneAndRecoverAfter(t *testing.T) {
	h, c, err := openCounting(t, hsmtest.New(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Init(ctx); err != nil {
		t.Fatal(err)
	}
	c.down.Store(true)
	if err := h.Health(ctx); !errors.Is(err, keyport.ErrUnavailable) {
		t.Fatalf("Health: %v, want ErrUnavailable", err)
	}
	if _, err := h.SignES256(ctx, []byte("x")); !errors.Is(err, keyport.ErrUnavailable) {
		t.Fatalf("SignES256: %v, want ErrUnavailable", err)
	}
	if _, err := h.AuditMAC(ctx, []byte("x")); !errors.Is(err, keyport.ErrUnavailable) {
		t.Fatalf("AuditMAC: %v, want ErrUnavailable", err)
	}
	c.down.Store(false)
	if err := h.Health(ctx); err != nil {
		t.Fatalf("Health after the token came back: %v", err)
	}
	if _, err := h.SignES256(ctx, []byte("x")); err != nil {
		t.Fatal(err)
	}
}

func TestAnOperationWhoseSessionBreaksIsRetriedOnceOnAFreshSession(t *testing.T) {
	h, c, err := openCounting(t, hsmtest.New(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Init(ctx); err != nil {
		t.Fatal(err)
	}
	opened := c.opened.Load()
	c.breakNextSign.Store(true)
	if _, err := h.SignES256(ctx, []byte("x")); err != nil {
		t.Fatalf("sign with one broken session: %v", err)
	}
	if n := c.opened.Load() - opened; n != 1 {
		t.Fatalf("%d sessions opened for the retry, want 1", n)
	}
}

func TestConcurrentOperationsShareThePoolWithoutCrashing(t *testing.T) {
	h := derivedBatch(t)
	req := generatedRequest(t, h, "b1", testEID, testAID)
	macRef := firstRef(t, h, "b1", testEID, testAID, keyport.UsageMAC)
	var wg sync.WaitGroup
	errs := make(chan error, 32*20)
	for g := range 32 {
		wg.Go(func() {
			for i := range 20 {
				var err error
				switch (g + i) % 5 {
				case 0:
					_, err = h.SignES256(ctx, []byte("x"))
				case 1:
					_, err = h.AuditMAC(ctx, []byte("x"))
				case 2:
					_, err = h.SCP03CMAC(ctx, macRef, []byte("x"))
				case 3:
					err = h.Health(ctx)
				case 4:
					if i%4 == 0 {
						_, err = h.WrapFirstKeys(ctx, req)
					} else {
						_, _, err = h.ReceiptKey(ctx)
					}
				}
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestAcquireGivesUpWhenTheContextEnds(t *testing.T) {
	tok := hsmtest.NewToken(t)
	h, err := hsm.Open(ctx, hsm.Config{URI: tok.URI, PoolSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	hold := make(chan struct{})
	started := make(chan struct{})
	go h.RawForTest(ctx, func(hsm.P11, pkcs11.SessionHandle) error {
		close(started)
		<-hold
		return nil
	})
	<-started
	c, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	err = h.Health(c)
	close(hold)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
}

func TestOperationsOnAClosedHSMFailWithErrClosed(t *testing.T) {
	h, err := hsm.Open(ctx, hsm.Config{URI: hsmtest.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	h.Close()
	if err := h.Health(ctx); !errors.Is(err, hsm.ErrClosed) {
		t.Fatalf("err = %v", err)
	}
}
