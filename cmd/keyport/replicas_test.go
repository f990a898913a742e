package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/agent"
	"github.com/keyport/keyport/cardlink/cardlinktest"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
)

// replica is one `keyport serve` process of the test.
type replica struct {
	n          int
	web, admin string // listen addresses
	metrics    string
	cmd        *exec.Cmd
	log        *os.File
	logPath    string
	done       chan struct{}
	killed     atomic.Bool
	dataDir    string
	baseURL    string
}

// startReplica starts replica n of bin on the shared database and token.
// The process is SIGKILLed when the test ends, whatever happened; it also
// dies with the test process (Pdeathsig).
func startReplica(t *testing.T, bin string, n int, dsn string, tok fixtureToken, migrate bool, extra ...string) *replica {
	t.Helper()
	r := &replica{n: n, web: freeAddr(t), admin: freeAddr(t), metrics: freeAddr(t), done: make(chan struct{}),
		dataDir: filepath.Join(t.TempDir(), fmt.Sprintf("replica%d", n))}
	r.baseURL = "http://" + r.web
	r.logPath = filepath.Join(t.TempDir(), fmt.Sprintf("replica%d.log", n))
	f, err := os.Create(r.logPath)
	if err != nil {
		t.Fatal(err)
	}
	r.log = f
	args := append([]string{"serve", "--data-dir", r.dataDir, "--db", dsn, "--hsm", tok.URI,
		"--addr", r.web, "--admin-addr", r.admin, "--metrics-addr", r.metrics, "--dual-control", "1",
		"--dev-allow-loopback-webhooks", "--log-format", "json", fmt.Sprintf("--migrate=%t", migrate)}, extra...)
	r.cmd = exec.Command(bin, args...)
	r.cmd.Env = append(cleanEnv(), "SOFTHSM2_CONF="+tok.Conf)
	r.cmd.Stdout, r.cmd.Stderr = f, f
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.cmd.Wait(); close(r.done) }()
	t.Cleanup(func() {
		r.cmd.Process.Kill() // os.ErrProcessDone after an exit
		<-r.done
		f.Close()
		if t.Failed() {
			b, _ := os.ReadFile(r.logPath)
			if len(b) > 8000 {
				b = b[len(b)-8000:]
			}
			t.Logf("replica %d log (tail):\n%s", n, b)
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(r.baseURL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return r
			}
		}
		select {
		case <-r.done:
			b, _ := os.ReadFile(r.logPath)
			t.Fatalf("replica %d exited at start:\n%s", n, b)
		default:
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(r.logPath)
			t.Fatalf("replica %d not ready within 60 s:\n%s", n, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (r *replica) kill(t *testing.T) {
	t.Helper()
	r.killed.Store(true)
	if err := r.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-r.done
}

func (r *replica) logText() string {
	b, _ := os.ReadFile(r.logPath)
	return string(b)
}

// metric returns the value of an unlabelled metric on the replica's /metrics.
func (r *replica) metric(t *testing.T, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + r.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	t.Fatalf("no metric %s on replica %d", name, r.n)
	return 0
}

// logLines counts the replica's JSON log lines with message msg for job
// ref (with "resume": true when resumed is set).
func logLines(r *replica, msg, ref string, resumed bool) int {
	n := 0
	for _, l := range strings.Split(r.logText(), "\n") {
		var e struct {
			Msg    string `json:"msg"`
			Job    string `json:"job"`
			Resume bool   `json:"resume"`
		}
		if json.Unmarshal([]byte(l), &e) == nil && e.Msg == msg && e.Job == ref && (!resumed || e.Resume) {
			n++
		}
	}
	return n
}

type fixtureToken struct{ URI, Conf string }

// tcpBalancer is a layer-4 load balancer in front of the replicas' admin
// ports: round robin over the replicas not killed, the next one tried when
// a dial fails. TLS-PSK passes through; last is the replica of the newest
// connection.
type tcpBalancer struct {
	ln    net.Listener
	reps  []*replica
	next  atomic.Int64
	last  atomic.Int64
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func startBalancer(t *testing.T, reps []*replica) *tcpBalancer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &tcpBalancer{ln: ln, reps: reps, conns: map[net.Conn]struct{}{}}
	b.last.Store(-1)
	go b.serve()
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for c := range b.conns {
			c.Close()
		}
		b.mu.Unlock()
	})
	return b
}

func (b *tcpBalancer) track(c net.Conn, on bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if on {
		b.conns[c] = struct{}{}
	} else {
		delete(b.conns, c)
	}
}

func (b *tcpBalancer) serve() {
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		go b.proxy(c)
	}
}

func (b *tcpBalancer) proxy(c net.Conn) {
	b.track(c, true)
	defer func() { c.Close(); b.track(c, false) }()
	var up net.Conn
	for range len(b.reps) {
		r := b.reps[int(b.next.Add(1))%len(b.reps)]
		if r.killed.Load() {
			continue
		}
		var err error
		if up, err = net.DialTimeout("tcp", r.admin, 5*time.Second); err == nil {
			b.last.Store(int64(r.n))
			break
		}
	}
	if up == nil {
		return
	}
	b.track(up, true)
	defer func() { up.Close(); b.track(up, false) }()
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); done <- struct{}{} }()
	go func() { io.Copy(c, up); done <- struct{}{} }()
	<-done // either side closed: close both
}

func (b *tcpBalancer) addr() string { return b.ln.Addr().String() }

// blockingCard is the module's channel, as a handset agent sees it: it
// counts the commands with each INS, and before the first command with
// blockINS it says so on blocked and waits for release.
type blockingCard struct {
	card     gp.Channel
	mu       sync.Mutex
	ins      map[byte]int
	apdus    int
	blockINS byte
	blocked  chan struct{}
	release  chan struct{}
	once     sync.Once
}

func (c *blockingCard) Transmit(ctx context.Context, apdu []byte) ([]byte, error) {
	if len(apdu) >= 4 && c.blockINS != 0 && apdu[1] == c.blockINS {
		c.once.Do(func() {
			close(c.blocked)
			select {
			case <-c.release:
			case <-ctx.Done():
			}
		})
	}
	c.mu.Lock()
	c.apdus++
	if len(apdu) >= 2 {
		c.ins[apdu[1]]++
	}
	c.mu.Unlock()
	return c.card.Transmit(ctx, apdu)
}

func (c *blockingCard) count(ins byte) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ins[ins]
}

func (c *blockingCard) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.apdus
}

const insPutKey = 0xD8

// TestThreeReplicasOnPostgres runs three `keyport serve` processes on one
// PostgreSQL database and one SoftHSM token, each with its web and admin
// ports: claims raced across them have one winner; a module's admin
// session is served by every replica; a replica SIGKILLed in the middle of
// a session leaves its lease to expire while the agent resumes on another
// replica and the job completes exactly once; a wake-up and a cancel made
// on one replica reach the agent whose long poll is held by another (the
// long poll's own database polling is set to 10 minutes here, so only the
// push can have woken it).
func TestThreeReplicasOnPostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("builds keyport and starts three servers")
	}
	ctx := context.Background()
	dsn := storetest.PostgresURL(t)
	st := storetest.Open(t, dsn)
	w := fixture.New(t, st, 3, 2)
	w.Svc.Link = w.HSM
	w.Svc.Delivery.DevLoopbackWebhooks = true
	tok := fixtureToken{URI: w.Token.URI, Conf: w.Token.Conf}
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()

	bin := filepath.Join(t.TempDir(), "keyport")
	buildKeyport(t, bin)
	// One migration runner: the first replica; the others refuse an old
	// schema instead of migrating.
	common := []string{"--admin-lease", "3s", "--wake-wait", "10m", "--wake-check", "10m"}
	reps := []*replica{startReplica(t, bin, 0, dsn, tok, true, common...)}
	for n := 1; n < 3; n++ {
		reps = append(reps, startReplica(t, bin, n, dsn, tok, false, common...))
	}
	lb := startBalancer(t, reps)

	// Three providers, each with a webhook to the sink.
	sink := &webhookSink{}
	hooks := httptest.NewServer(sink)
	defer hooks.Close()
	type provider struct {
		p     keyport.Principal
		token string
		wk    string
	}
	keys := []*rsa.PrivateKey{fixture.RSAKeys()[0], fixture.RSAKeys()[1]}
	k3, err := rsa.GenerateKey(rand.Reader, 3072)
	if err != nil {
		t.Fatal(err)
	}
	keys = append(keys, k3)
	var provs []provider
	for i, k := range keys {
		p, token, wk := w.Provider(t, fmt.Sprintf("Bank %d", i), k)
		if _, err := w.Svc.SetWebhook(ctx, p, fmt.Sprintf("%s/p%d", hooks.URL, i)); err != nil {
			t.Fatal(err)
		}
		provs = append(provs, provider{p, token, wk})
	}
	call := func(r *replica, token, method, path string, body any) (int, []byte) {
		t.Helper()
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequest(method, r.baseURL+path, rd)
		req.Header.Set("Authorization", "Bearer "+token)
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("replica %d %s %s: %v", r.n, method, path, err)
		}
		defer resp.Body.Close()
		rb, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, rb
	}
	eids := []keyport.EID{fixture.EID(t, 0), fixture.EID(t, 1), fixture.EID(t, 2)}
	cards := make([]*cardlinktest.MemCard, 3)
	for m, e := range eids {
		cards[m] = &cardlinktest.MemCard{Card: cardlinktest.NewModule(t, e, w.Keys[e])}
	}
	pskOf := func(e keyport.EID) []byte { return w.HandshakePSK(t, e) }
	newAgent := func(m int, server string, card gp.Channel) *agent.Agent {
		return agent.New(agent.Config{Server: server, Identity: string(eids[m]), PSK: pskOf(eids[m]),
			Retry: 200 * time.Millisecond, Retries: 8}, card)
	}
	second := map[keyport.KeyUsage][]byte{}
	for _, u := range keyport.Usages {
		second[u] = make([]byte, 16)
		rand.Read(second[u])
	}
	submit := func(r *replica, pv provider, m int, aid keyport.AID) keyport.JobView {
		t.Helper()
		req, err := keyport.SecondKeyScript(aid, 0x30, 0, 0x31, w.Keys[eids[m]][aid], second)
		if err != nil {
			t.Fatal(err)
		}
		st, rb := call(r, pv.token, "POST", fmt.Sprintf("/api/v1/domains/%s/%s/scripts", eids[m], aid), req)
		var j keyport.JobView
		if json.Unmarshal(rb, &j); st != 201 || j.State != keyport.JobQueued {
			t.Fatalf("submit on replica %d: %d %s", r.n, st, rb)
		}
		return j
	}
	job := func(ref string) *keyport.Job {
		t.Helper()
		j, err := st.GetJob(ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		return j
	}
	waitJob := func(ref string, want keyport.JobState) *keyport.Job {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			j := job(ref)
			if j.State == want {
				return j
			}
			if j.State.Final() || time.Now().After(deadline) {
				t.Fatalf("job %s is %s (%s), want %s", ref, j.State, j.LastError, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// hooksFor counts the events of type typ for job ref the sink got,
	// once the outbox has nothing left to send.
	hooksFor := func(ref, typ string) (sent, outbox int) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			var queued int
			if err := db.QueryRow(`SELECT COUNT(*) FROM jobs WHERE kind = 'webhook' AND state = 'QUEUED'`).Scan(&queued); err != nil {
				t.Fatal(err)
			}
			if queued == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d webhooks still queued after 60 s", queued)
			}
			time.Sleep(100 * time.Millisecond)
		}
		rows, err := db.Query(`SELECT payload FROM jobs WHERE kind = 'webhook'`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		match := func(b []byte) bool {
			var ev keyport.WebhookEvent
			return json.Unmarshal(b, &ev) == nil && ev.Job.ID == ref && ev.Type == typ
		}
		for rows.Next() {
			var b []byte
			if err := rows.Scan(&b); err != nil {
				t.Fatal(err)
			}
			if match(b) {
				outbox++
			}
		}
		sink.mu.Lock()
		defer sink.mu.Unlock()
		for _, b := range sink.bodies {
			if match(b) {
				sent++
			}
		}
		return sent, outbox
	}
	leaseRows := func(m int) int {
		t.Helper()
		var n int
		if err := db.QueryRow(`SELECT COUNT(*) FROM admin_leases l JOIN modules m ON m.id = l.module_id WHERE m.eid = $1`, string(eids[m])).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	claimWinners := map[int]int{} // module → provider that won its domain 2
	t.Run("claims raced across replicas have one winner", func(t *testing.T) {
		// Every provider claims domain 2 of every module, each claim on
		// another replica, all at once.
		type result struct {
			prov, m, status int
			body            []byte
		}
		var wg sync.WaitGroup
		start := make(chan struct{})
		results := make(chan result, 9)
		for pi := range provs {
			for m := range eids {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					r := reps[(pi+m)%3]
					b, _ := json.Marshal(map[string]string{"eid": string(eids[m]), "aid": string(fixture.AID(2)), "wrapping_key_id": provs[pi].wk})
					req, _ := http.NewRequest("POST", r.baseURL+"/api/v1/claims", bytes.NewReader(b))
					req.Header.Set("Authorization", "Bearer "+provs[pi].token)
					req.Header.Set("Content-Type", "application/json")
					resp, err := http.DefaultClient.Do(req)
					if err != nil {
						results <- result{pi, m, 0, []byte(err.Error())}
						return
					}
					rb, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					results <- result{pi, m, resp.StatusCode, rb}
				}()
			}
		}
		close(start)
		wg.Wait()
		close(results)
		winners := map[int][]int{}
		for r := range results {
			switch r.status {
			case 201:
				winners[r.m] = append(winners[r.m], r.prov)
			case 409:
				var p struct{ Type string }
				if json.Unmarshal(r.body, &p); p.Type != "urn:keyport:problem:conflict" {
					t.Errorf("provider %d module %d: 409 %s, want the conflict problem", r.prov, r.m, r.body)
				}
			default:
				t.Errorf("provider %d module %d: %d %s", r.prov, r.m, r.status, r.body)
			}
		}
		for m := range eids {
			if len(winners[m]) != 1 {
				t.Fatalf("module %d: winners %v, want exactly one", m, winners[m])
			}
			var owner sql.NullString
			var n int
			if err := db.QueryRow(`SELECT COUNT(*), MAX(d.owner_id) FROM domains d JOIN modules m ON m.id = d.module_id
				WHERE m.eid = $1 AND d.aid = $2 AND d.owner_id IS NOT NULL`, string(eids[m]), string(fixture.AID(2))).Scan(&n, &owner); err != nil {
				t.Fatal(err)
			}
			if n != 1 || owner.String != provs[winners[m][0]].p.ProviderID {
				t.Fatalf("module %d: %d owned rows, owner %q, want the winner %s", m, n, owner.String, provs[winners[m][0]].p.ProviderID)
			}
			var claims int
			var claimer string
			if err := db.QueryRow(`SELECT COUNT(*), MAX(provider_id) FROM claims WHERE eid = $1 AND aid = $2`,
				string(eids[m]), string(fixture.AID(2))).Scan(&claims, &claimer); err != nil {
				t.Fatal(err)
			}
			if claims != 1 || claimer != owner.String {
				t.Fatalf("module %d: %d claim rows (by %s), want the winner's one", m, claims, claimer)
			}
		}
		for m := range eids {
			claimWinners[m] = winners[m][0]
		}
	})

	t.Run("a module's admin session is served by every replica", func(t *testing.T) {
		if len(claimWinners) != len(eids) {
			t.Skip("needs the claims above")
		}
		// The winners' second-key scripts, each queued on one replica and
		// delivered in a session on another, the agent pointed at it
		// directly; then every module opens a session on every replica
		// (TLS-PSK with the PSK the shared token unseals, the lease taken
		// and released), which has nothing more to run.
		for m := range eids {
			pv := provs[claimWinners[m]]
			j := submit(reps[(m+1)%3], pv, m, fixture.AID(2))
			r := reps[m]
			rep, err := newAgent(m, r.admin, cards[m]).Session(ctx)
			if err != nil || rep.Scripts != 1 {
				t.Fatalf("session of module %d on replica %d: %+v %v", m, r.n, rep, err)
			}
			if got := waitJob(j.ID, keyport.JobDone); got.Result == nil || !got.Result.Confirmed {
				t.Fatalf("module %d: %+v", m, got.Result)
			}
			if n := logLines(r, "script sent", j.ID, false); n != 1 {
				t.Fatalf("replica %d logged %d sends of job %s", r.n, n, j.ID)
			}
			for _, r := range reps {
				if rep, err := newAgent(m, r.admin, cards[m]).Session(ctx); err != nil || rep.Scripts != 0 {
					t.Fatalf("empty session of module %d on replica %d: %+v %v", m, r.n, rep, err)
				}
			}
			if n := leaseRows(m); n != 0 {
				t.Fatalf("module %d: %d lease rows after its sessions", m, n)
			}
		}
	})

	// Domain 1 of every module goes to provider 0.
	for m := range eids {
		st, rb := call(reps[m], provs[0].token, "POST", "/api/v1/claims", map[string]string{"eid": string(eids[m]), "aid": string(fixture.AID(1)), "wrapping_key_id": provs[0].wk})
		if st != 201 {
			t.Fatalf("claim of domain 1 of module %d: %d %s", m, st, rb)
		}
	}

	t.Run("wake-up queued on one replica reaches the long poll held by another", func(t *testing.T) {
		const m = 1
		y, x := reps[2], reps[0]
		card := &blockingCard{card: cards[m], ins: map[byte]int{}}
		actx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- newAgent(m, y.admin, card).Run(actx) }()
		defer func() { stop(); <-done }()
		// The long poll is held on Y (its session count went up, and no
		// job is queued: it waits).
		deadline := time.Now().Add(30 * time.Second)
		for y.metric(t, "keyport_admin_sessions_active") < 1 {
			if time.Now().After(deadline) {
				t.Fatal("the agent's long poll is not held on replica 2")
			}
			time.Sleep(50 * time.Millisecond)
		}
		j := submit(x, provs[0], m, fixture.AID(1))
		if got := waitJob(j.ID, keyport.JobDone); got.Result == nil || !got.Result.Confirmed {
			t.Fatalf("job %+v", got.Result)
		}
		if card.count(insPutKey) != 1 {
			t.Fatalf("PUT KEY sent %d times", card.count(insPutKey))
		}
		path := "the replica's own hub"
		if strings.Contains(y.logText(), "wake-up from the bus delivered") {
			path = "the PostgreSQL bus"
		}
		t.Logf("the agent on replica 2 was woken through %s", path)
	})

	t.Run("cancel on one replica reaches the module woken on another", func(t *testing.T) {
		const m = 2
		y, x := reps[1], reps[2]
		card := &blockingCard{card: cards[m], ins: map[byte]int{}}
		a := newAgent(m, y.admin, card)
		woken := make(chan bool, 1)
		wctx, stop := context.WithCancel(ctx)
		defer stop()
		go func() { ok, _ := a.WaitWake(wctx); woken <- ok }()
		deadline := time.Now().Add(30 * time.Second)
		for y.metric(t, "keyport_admin_sessions_active") < 1 {
			if time.Now().After(deadline) {
				t.Fatal("the agent's long poll is not held on replica 1")
			}
			time.Sleep(50 * time.Millisecond)
		}
		j := submit(x, provs[0], m, fixture.AID(1))
		select {
		case ok := <-woken:
			if !ok {
				t.Fatal("the long poll ended without a wake-up")
			}
		case <-time.After(60 * time.Second):
			t.Fatal("no wake-up within 60 s")
		}
		// Before the module opens its session, the provider cancels on X.
		if st, rb := call(x, provs[0].token, "POST", "/api/v1/jobs/"+j.ID+"/cancel", nil); st != 200 {
			t.Fatalf("cancel: %d %s", st, rb)
		}
		rep, err := a.Session(ctx)
		if err != nil || rep.Scripts != 0 || card.total() != 0 {
			t.Fatalf("session after the cancel: %+v %v, card saw %d commands", rep, err, card.total())
		}
		if got := job(j.ID); got.State != keyport.JobCancelled {
			t.Fatalf("job is %s", got.State)
		}
		if n := leaseRows(m); n != 0 {
			t.Fatalf("%d lease rows after the session", n)
		}
		if sent, outbox := hooksFor(j.ID, "job.cancelled"); sent != 1 || outbox != 1 {
			t.Fatalf("job.cancelled webhooks: %d sent, %d in the outbox; want 1", sent, outbox)
		}
	})

	t.Run("replica killed mid-session: lease expires, the job completes once through another", func(t *testing.T) {
		const m = 0
		card := &blockingCard{card: cards[m], ins: map[byte]int{}, blockINS: insPutKey,
			blocked: make(chan struct{}), release: make(chan struct{})}
		j := submit(reps[1], provs[0], m, fixture.AID(1))
		a := newAgent(m, lb.addr(), card)
		type out struct {
			rep agent.Report
			err error
		}
		res := make(chan out, 1)
		sctx, stop := context.WithCancel(ctx)
		defer stop() // a failure below must not leave the session blocked in the card
		go func() { rep, err := a.Session(sctx); res <- out{rep, err} }()
		select {
		case <-card.blocked:
		case o := <-res:
			t.Fatalf("session ended before the PUT KEY: %+v %v", o.rep, o.err)
		case <-time.After(60 * time.Second):
			t.Fatal("the card got no PUT KEY within 60 s")
		}
		holder := reps[lb.last.Load()]
		if got := job(j.ID); got.State != keyport.JobSent || got.Result == nil {
			t.Fatalf("job mid-session: %s", got.State)
		}
		session := job(j.ID).Result.Session
		holder.kill(t)
		t.Logf("replica %d held session %s and was killed", holder.n, session)
		// The dead replica's lease stays until it expires (3 s here).
		var until time.Time
		if err := db.QueryRow(`SELECT l.expires_at FROM admin_leases l JOIN modules m ON m.id = l.module_id WHERE m.eid = $1 AND l.holder = $2`,
			string(eids[m]), session).Scan(&until); err != nil {
			t.Fatalf("the session's lease: %v", err)
		}
		for {
			var expired bool
			if err := db.QueryRow(`SELECT $1::timestamptz < now()`, until).Scan(&expired); err != nil {
				t.Fatal(err)
			}
			if expired {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		close(card.release)
		var o out
		select {
		case o = <-res:
		case <-time.After(90 * time.Second):
			t.Fatal("the session did not end within 90 s of the release")
		}
		if o.err != nil || o.rep.Scripts != 1 || o.rep.Resumed < 1 {
			t.Fatalf("session: %+v %v; want one script, resumed", o.rep, o.err)
		}
		if now := lb.last.Load(); now == int64(holder.n) {
			t.Fatalf("the resume went to the killed replica %d", now)
		}
		got := waitJob(j.ID, keyport.JobDone)
		if got.Result == nil || !got.Result.Confirmed {
			t.Fatalf("job result %+v; want confirmed", got.Result)
		}
		// The killed replica sent the script; another recorded the answer,
		// on the resume.
		if n := logLines(holder, "script sent", j.ID, false); n != 1 {
			t.Fatalf("replica %d logged %d sends of the script", holder.n, n)
		}
		answered := 0
		for _, r := range reps {
			n := logLines(r, "script answered", j.ID, true)
			if n > 0 && r == holder {
				t.Fatalf("the killed replica %d recorded the answer", r.n)
			}
			answered += n
		}
		if answered != 1 {
			t.Fatalf("%d resumed answers recorded, want 1", answered)
		}
		if n := card.count(insPutKey); n != 1 {
			t.Fatalf("the card got PUT KEY %d times", n)
		}
		var dones int
		if err := db.QueryRow(`SELECT COUNT(*) FROM audit_events WHERE action = 'second-key.confirmed' AND detail::text LIKE $1`, "%"+j.ID+"%").Scan(&dones); err != nil {
			t.Fatal(err)
		}
		if dones != 1 {
			t.Fatalf("%d second-key.confirmed audit events for the job", dones)
		}
		if n := leaseRows(m); n != 0 {
			t.Fatalf("%d lease rows after the session", n)
		}
		if sent, outbox := hooksFor(j.ID, "job.done"); sent != 1 || outbox != 1 {
			t.Fatalf("job.done webhooks: %d sent, %d in the outbox; want 1", sent, outbox)
		}
		var dom struct {
			State string
			KVN   int
		}
		if err := db.QueryRow(`SELECT d.state, d.kvn FROM domains d JOIN modules m ON m.id = d.module_id WHERE m.eid = $1 AND d.aid = $2`,
			string(eids[m]), string(fixture.AID(1))).Scan(&dom.State, &dom.KVN); err != nil {
			t.Fatal(err)
		}
		if dom.State != string(keyport.Personalized) || dom.KVN != 0x31 {
			t.Fatalf("domain after the session: %+v", dom)
		}
		// The card agrees: the provider's keys open the SSD, the first do not.
		host := cardlinktest.NewHost(t, cards[m])
		if sw := host.Authenticate(fixture.AID(1).Bytes(), 0x31, cardlinktest.Triple(second)); sw != gp.SWOK {
			t.Fatalf("the provider's keys on the card: %v", sw)
		}
		if sw := host.Authenticate(fixture.AID(1).Bytes(), 0x30, cardlinktest.Triple(w.Keys[eids[m]][fixture.AID(1)])); sw != gp.SWReferencedDataNotFound {
			t.Fatalf("the first keys on the card: %v, want 6A88", sw)
		}
	})
}
