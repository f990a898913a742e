package hsm

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"
	"github.com/prometheus/client_golang/prometheus"
)

// mechanismNames are the mechanisms keyport uses, as the latency histogram
// labels them; any other is "other".
var mechanismNames = map[uint]string{
	pkcs11.CKM_AES_CBC:                "CKM_AES_CBC",
	pkcs11.CKM_AES_CMAC:               "CKM_AES_CMAC",
	pkcs11.CKM_AES_ECB:                "CKM_AES_ECB",
	pkcs11.CKM_AES_ECB_ENCRYPT_DATA:   "CKM_AES_ECB_ENCRYPT_DATA",
	pkcs11.CKM_AES_KEY_GEN:            "CKM_AES_KEY_GEN",
	pkcs11.CKM_AES_KEY_WRAP_PAD:       "CKM_AES_KEY_WRAP_PAD",
	pkcs11.CKM_ECDSA:                  "CKM_ECDSA",
	pkcs11.CKM_EC_KEY_PAIR_GEN:        "CKM_EC_KEY_PAIR_GEN",
	pkcs11.CKM_GENERIC_SECRET_KEY_GEN: "CKM_GENERIC_SECRET_KEY_GEN",
	pkcs11.CKM_RSA_AES_KEY_WRAP:       "CKM_RSA_AES_KEY_WRAP",
	pkcs11.CKM_RSA_PKCS_OAEP:          "CKM_RSA_PKCS_OAEP",
	pkcs11.CKM_SHA256_HMAC:            "CKM_SHA256_HMAC",
}

func mechanismName(m []*pkcs11.Mechanism) string {
	if len(m) > 0 {
		if n, ok := mechanismNames[m[0].Mechanism]; ok {
			return n
		}
	}
	return "other"
}

// Pool errors, by cause: the label values of keyport_hsm_session_errors_total.
const (
	errSessionLost = iota // a session the token no longer serves (sessionFatal, or gone from an idle one), dropped
	errStaleHandle        // a cached object handle went stale; looked up again
	errOpen               // C_OpenSession or C_GetSessionInfo failed
	errLogin              // C_Login failed
	numPoolErrors
)

var poolErrorCauses = [numPoolErrors]string{"session_lost", "stale_handle", "open", "login"}

// timing holds the latency histogram once Collector has been called.
type timing struct {
	seconds *prometheus.HistogramVec
}

// timedP11 times the calls that run a mechanism, by mechanism, while the
// HSM's metrics are on. A two-step operation (C_SignInit then C_Sign) is
// timed from the init to the end of the second step: each session is used
// by one goroutine at a time, so the pending start is kept per session.
type timedP11 struct {
	p11
	on      *atomic.Pointer[timing]
	pending sync.Map // pkcs11.SessionHandle -> pendingOp
}

type pendingOp struct {
	mech  string
	start time.Time
}

func (t *timedP11) observe(call, mech string, start time.Time) {
	if m := t.on.Load(); m != nil {
		m.seconds.WithLabelValues(call, mech).Observe(time.Since(start).Seconds())
	}
}

func (t *timedP11) begin(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, err error) {
	if err == nil && t.on.Load() != nil {
		t.pending.Store(sh, pendingOp{mech: mechanismName(m), start: time.Now()})
	}
}

func (t *timedP11) end(call string, sh pkcs11.SessionHandle) {
	if p, ok := t.pending.LoadAndDelete(sh); ok {
		op := p.(pendingOp)
		t.observe(call, op.mech, op.start)
	}
}

func (t *timedP11) EncryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	err := t.p11.EncryptInit(sh, m, o)
	t.begin(sh, m, err)
	return err
}

func (t *timedP11) Encrypt(sh pkcs11.SessionHandle, message []byte) ([]byte, error) {
	out, err := t.p11.Encrypt(sh, message)
	t.end("encrypt", sh)
	return out, err
}

func (t *timedP11) SignInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	err := t.p11.SignInit(sh, m, o)
	t.begin(sh, m, err)
	return err
}

func (t *timedP11) Sign(sh pkcs11.SessionHandle, message []byte) ([]byte, error) {
	out, err := t.p11.Sign(sh, message)
	t.end("sign", sh)
	return out, err
}

func (t *timedP11) GenerateKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, temp []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	start := time.Now()
	o, err := t.p11.GenerateKey(sh, m, temp)
	t.observe("generate", mechanismName(m), start)
	return o, err
}

func (t *timedP11) GenerateKeyPair(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, public, private []*pkcs11.Attribute) (pkcs11.ObjectHandle, pkcs11.ObjectHandle, error) {
	start := time.Now()
	pub, priv, err := t.p11.GenerateKeyPair(sh, m, public, private)
	t.observe("generate", mechanismName(m), start)
	return pub, priv, err
}

func (t *timedP11) WrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, wrapping, key pkcs11.ObjectHandle) ([]byte, error) {
	start := time.Now()
	out, err := t.p11.WrapKey(sh, m, wrapping, key)
	t.observe("wrap", mechanismName(m), start)
	return out, err
}

func (t *timedP11) UnwrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, unwrapping pkcs11.ObjectHandle, wrapped []byte, a []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	start := time.Now()
	o, err := t.p11.UnwrapKey(sh, m, unwrapping, wrapped, a)
	t.observe("unwrap", mechanismName(m), start)
	return o, err
}

func (t *timedP11) DeriveKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, base pkcs11.ObjectHandle, a []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	start := time.Now()
	o, err := t.p11.DeriveKey(sh, m, base, a)
	t.observe("derive", mechanismName(m), start)
	return o, err
}

var (
	sessionsDesc = prometheus.NewDesc("keyport_hsm_sessions", "PKCS#11 sessions of the pool, by state: in use, idle, and the most in use at once (max).",
		[]string{"state"}, nil)
	sessionErrorsDesc = prometheus.NewDesc("keyport_hsm_session_errors_total", "Session pool errors by cause: session_lost (the token no longer served a session; it was dropped), stale_handle, open, login.",
		[]string{"cause"}, nil)
)

// collector exports the HSM's metrics.
type collector struct {
	h *HSM
	t *timing
}

// Collector returns the HSM's Prometheus metrics, and from the first call on
// times every mechanism call (keyport_hsm_operation_seconds, by call and
// mechanism) besides the session pool's size and errors, which are always
// counted. Labels come from fixed sets: no key label, handle or PIN.
func (h *HSM) Collector() prometheus.Collector {
	h.timingOnce.Do(func() {
		h.timing.Store(&timing{seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keyport_hsm_operation_seconds",
			Help:    "Latency of PKCS#11 calls that run a mechanism (a two-step one from its init), by call (encrypt, sign, wrap, unwrap, derive, generate) and mechanism.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"call", "mechanism"})})
	})
	return &collector{h: h, t: h.timing.Load()}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- sessionsDesc
	ch <- sessionErrorsDesc
	c.t.seconds.Describe(ch)
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	h := c.h
	h.mu.Lock()
	idle := len(h.idle)
	h.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(sessionsDesc, prometheus.GaugeValue, float64(len(h.inUse)+len(h.locked)), "in_use")
	ch <- prometheus.MustNewConstMetric(sessionsDesc, prometheus.GaugeValue, float64(idle), "idle")
	ch <- prometheus.MustNewConstMetric(sessionsDesc, prometheus.GaugeValue, float64(cap(h.inUse)+cap(h.locked)), "max")
	for i, cause := range poolErrorCauses {
		ch <- prometheus.MustNewConstMetric(sessionErrorsDesc, prometheus.CounterValue, float64(h.poolErrs[i].Load()), cause)
	}
	c.t.seconds.Collect(ch)
}
