package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
)

// chromiumPath is Debian's Chromium, which the browser tests drive.
const chromiumPath = "/usr/bin/chromium"

// The acceptance test of the demo (issue 13): the demo is started exactly as
// the Makefile's demo target starts it (its recipe, read from the Makefile,
// run on the built binary in a fresh directory; only the listen address is
// the test's own), a newcomer signs in as the printed demo provider in
// Chromium, looks up a printed EID, claims a domain, downloads the key
// package, runs the printed `keyport sp script` line (the README's), and
// sees the job go DONE in the portal. Run again, the demo serves the same
// data; then serve refuses its data directory. Screenshots go to the test's
// artifact directory (or $KEYPORT_SCREENSHOT_DIR).
func TestDemoAsTheREADMESaysFromSignInToTheSecondKeysInChromium(t *testing.T) {
	newTab := startChromium(t)
	makefile, readme := repoFile(t, "Makefile"), repoFile(t, "README.md")
	if first := strings.Join(strings.SplitN(readme, "\n", 25)[:24], "\n"); !strings.Contains(first, "make demo") || !strings.Contains(first, "make run") {
		t.Fatal("the README's first lines do not name make demo next to make run")
	}
	env, argv := makeRecipe(t, makefile, "demo")
	if len(argv) < 2 || argv[0] != "./bin/keyport" || argv[1] != "demo" {
		t.Fatalf("the demo recipe runs %q", argv)
	}
	work := t.TempDir()
	buildKeyport(t, filepath.Join(work, "bin", "keyport"))
	addr := freeAddr(t)
	demo := startCommand(t, work, append(env, "KEYPORT_ADDR="+addr), argv...)
	banner := demo.waitFor(t, "keyport demo started in", 3*time.Minute)
	t.Logf("demo start (first run, setup included): %s by the demo's own clock, %s from exec to its banner",
		regexp.MustCompile(`started in (\S+)`).FindStringSubmatch(banner)[1], demo.bannerAfter.Round(time.Millisecond))

	// What the demo printed.
	m := regexp.MustCompile(`(?m)^Provider:\s+(\S+)\s+password (\S+)`).FindStringSubmatch(banner)
	portal := regexp.MustCompile(`(?m)^Portal:\s+(\S+)`).FindStringSubmatch(banner)
	eids := regexp.MustCompile(`(?m)^  EID (\d{32})$`).FindAllStringSubmatch(banner, -1)
	line := regexp.MustCompile(`(?m)^  (\./bin/keyport sp script .*)$`).FindStringSubmatch(banner)
	if m == nil || portal == nil || len(eids) != 3 || line == nil || !strings.Contains(banner, "DEMO DATA") {
		t.Fatalf("the demo printed:\n%s", banner)
	}
	email, password, base, eid := m[1], m[2], portal[1], eids[1][1]
	_, port, _ := net.SplitHostPort(addr)
	if base != "http://localhost:"+port {
		t.Fatalf("portal printed as %s, listening on %s", base, addr)
	}
	// The README gives the same line, for the default address.
	if readmeLine := strings.ReplaceAll(line[1], base, "http://localhost:8080"); !strings.Contains(readme, readmeLine) {
		t.Fatalf("the README does not give the printed line\n%s", readmeLine)
	}
	for _, f := range []string{demoCredentialsName, demoTokenName, demoKeyName} {
		if st, err := os.Stat(filepath.Join(work, "var", "demo", f)); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, st.Mode(), err)
		}
	}

	// The browser: sign in, look the module up, claim, download.
	shot := newDemoShots(t)
	tab := newTab()
	downloads := t.TempDir()
	if _, err := chromedp.CallBrowser(tab, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{
		Behavior: browser.SetDownloadBehaviorBehaviorAllow, DownloadPath: downloads}); err != nil {
		t.Fatal(err)
	}
	browse(t, tab, chromedp.Navigate(base+"/login"))
	if !strings.Contains(pageText(t, tab, "#demo-banner"), "Demo data") {
		t.Fatal("the sign-in page has no demo banner")
	}
	shot.take(tab, "login")
	browse(t, tab, chromedp.SendKeys(chromedp.ID("email"), email), chromedp.SendKeys(chromedp.ID("password"), password))
	clickLoad(t, tab, "#signin")
	shot.take(tab, "dashboard")
	browse(t, tab, chromedp.Navigate(base+"/portal/modules"), chromedp.SendKeys(chromedp.ID("eid"), eid))
	clickLoad(t, tab, "#lookup")
	if got := pageText(t, tab, "#module-domains"); strings.Count(got, "UNASSIGNED") != 4 {
		t.Fatalf("module %s shows %q, want 4 unassigned domains", eid, got)
	}
	shot.take(tab, "lookup")
	clickLoad(t, tab, "#module-domains a.button")
	shot.take(tab, "claim-confirm")
	clickLoad(t, tab, "#confirm-claim")
	if got := pageText(t, tab, "#domain-state"); got != "ASSIGNED" {
		t.Fatalf("domain state after the claim: %q", got)
	}
	if !strings.Contains(pageText(t, tab, "#demo-banner"), "Demo data") {
		t.Fatal("the domain page has no demo banner")
	}
	shot.take(tab, "domain")
	browse(t, tab, chromedp.Click(chromedp.ID("download")))
	pkg := waitDownload(t, downloads)

	// The printed line, with the saved package.
	args := strings.Fields(strings.Replace(line[1], demoPackagePlaceholder, pkg, 1))
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = work
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	jobURL := regexp.MustCompile(`follow it in the portal: (\S+)`).FindSubmatch(out)
	if jobURL == nil || !strings.HasPrefix(string(jobURL[1]), base+"/portal/jobs/") {
		t.Fatalf("sp script said:\n%s", out)
	}

	// The job page follows the job to DONE.
	browse(t, tab, chromedp.Navigate(string(jobURL[1])))
	shot.take(tab, "job")
	deadline := time.Now().Add(60 * time.Second)
	for state := ""; state != "DONE"; {
		if time.Now().After(deadline) {
			t.Fatalf("job still %q; demo log:\n%s", state, demo.stderr())
		}
		time.Sleep(100 * time.Millisecond)
		state, _ = chromedp.Run(tab, chromedp.Text(chromedp.ID("job-state")))
	}
	// The page saw DONE live and now reloads itself to show the final
	// state: a screenshot taken during that reload finds no page. Load it
	// once more and wait for it, then take the picture.
	browse(t, tab, chromedp.Navigate(string(jobURL[1])))
	if state, err := chromedp.Run(tab, chromedp.Text(chromedp.ID("job-state"))); err != nil || state != "DONE" {
		t.Fatalf("the job page after its reload: %q %v", state, err)
	}
	shot.take(tab, "job-done")
	browse(t, tab, chromedp.Navigate(base+"/portal"))
	shot.take(tab, "dashboard-after")

	// The API says the module is demo data.
	token, _ := os.ReadFile(filepath.Join(work, "var", "demo", demoTokenName))
	req, _ := http.NewRequest("GET", "http://"+addr+"/api/v1/modules/"+eid, nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"demo":true`) || !strings.Contains(string(body), `"state":"PERSONALIZED"`) {
		t.Fatalf("module answer %d %s", resp.StatusCode, body)
	}

	if err := demo.stop(); err != nil {
		t.Fatalf("demo did not stop cleanly: %v\n%s", err, demo.stderr())
	}
	// The same command again serves the same demo and prints the same.
	again := startCommand(t, work, append(env, "KEYPORT_ADDR="+addr), argv...)
	banner2 := again.waitFor(t, "keyport demo started in", 2*time.Minute)
	t.Logf("demo start (second run, nothing to set up): %s from exec to its banner", again.bannerAfter.Round(time.Millisecond))
	if !strings.Contains(banner2, password) || !strings.Contains(banner2, "EID "+eid) || strings.Contains(again.stderr(), "module personalized") {
		t.Fatalf("second run printed:\n%s\nlog:\n%s", banner2, again.stderr())
	}
	if err := again.stop(); err != nil {
		t.Fatalf("demo did not stop cleanly: %v\n%s", err, again.stderr())
	}
	// keyport serve refuses the demo's data.
	serve := exec.Command("./bin/keyport", "serve")
	serve.Dir = work
	serve.Env = append(cleanEnv(), "KEYPORT_DATA_DIR=./var/demo", "KEYPORT_ADDR="+addr)
	out, err = serve.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "holds demo data") {
		t.Fatalf("serve on the demo data: %v\n%s", err, out)
	}
	t.Logf("%d screenshots in %s", shot.n, shot.dir)
}

// repoFile reads a file at the repository's root.
func repoFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// makeRecipe returns the environment assignments and the command of the
// target's one-line recipe, with the Makefile's variables expanded.
func makeRecipe(t *testing.T, makefile, target string) (env, argv []string) {
	t.Helper()
	vars := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^([A-Z_]+)\s*(?:\?=|:=|=)\s*(.*?)\s*$`).FindAllStringSubmatch(makefile, -1) {
		vars[m[1]] = m[2]
	}
	m := regexp.MustCompile(`(?m)^` + target + `:.*\n\t(.*)$`).FindStringSubmatch(makefile)
	if m == nil {
		t.Fatalf("the Makefile has no one-line %s recipe", target)
	}
	line := regexp.MustCompile(`\$\(([A-Z_]+)\)`).ReplaceAllStringFunc(m[1], func(v string) string {
		val, ok := vars[v[2:len(v)-1]]
		if !ok {
			t.Fatalf("the %s recipe uses %s, which the Makefile does not set", target, v)
		}
		return val
	})
	fields := strings.Fields(line)
	for len(fields) > 0 && regexp.MustCompile(`^[A-Z_]+=`).MatchString(fields[0]) {
		env, fields = append(env, fields[0]), fields[1:]
	}
	return env, fields
}

func buildKeyport(t *testing.T, out string) {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	cmd := exec.Command(gobin, "build", "-o", out, ".")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// cleanEnv is the test's environment without KEYPORT_ variables, which
// would change what the commands do.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KEYPORT_") {
			out = append(out, kv)
		}
	}
	return out
}

// process is a command the test started, with its output collected.
type process struct {
	cmd         *exec.Cmd
	started     time.Time
	bannerAfter time.Duration
	mu          sync.Mutex
	out, err    strings.Builder
	lines       chan string
	done        chan error
}

func startCommand(t *testing.T, dir string, env []string, argv ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(argv[0], argv[1:]...), lines: make(chan string, 1024), done: make(chan error, 1)}
	p.cmd.Dir = dir
	p.cmd.Env = append(cleanEnv(), env...)
	stdoutPipe, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stderr = writerFunc(func(b []byte) (int, error) {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.err.Write(b)
	})
	p.started = time.Now()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdoutPipe)
		for sc.Scan() {
			p.mu.Lock()
			p.out.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			p.lines <- sc.Text()
		}
		close(p.lines)
		p.done <- p.cmd.Wait()
	}()
	t.Cleanup(func() { p.cmd.Process.Kill() }) // after an exit: os.ErrProcessDone
	return p
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// waitFor reads stdout until a line contains s and returns all it read.
func (p *process) waitFor(t *testing.T, s string, timeout time.Duration) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				t.Fatalf("the command ended before printing %q: %v\nstdout:\n%s\nstderr:\n%s", s, <-p.done, p.stdout(), p.stderr())
			}
			if strings.Contains(l, s) {
				p.bannerAfter = time.Since(p.started)
				return p.stdout()
			}
		case <-deadline:
			t.Fatalf("no %q within %v\nstdout:\n%s\nstderr:\n%s", s, timeout, p.stdout(), p.stderr())
		}
	}
}

func (p *process) stdout() string { p.mu.Lock(); defer p.mu.Unlock(); return p.out.String() }
func (p *process) stderr() string { p.mu.Lock(); defer p.mu.Unlock(); return p.err.String() }

// stop interrupts the command (Ctrl-C) and waits for it to exit.
func (p *process) stop() error {
	p.cmd.Process.Signal(os.Interrupt)
	go func() {
		for range p.lines {
		}
	}()
	select {
	case err := <-p.done:
		return err
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		return errors.New("no exit within 30 s of the interrupt")
	}
}

// startChromium starts headless Chromium and returns a function opening a
// tab in it (the default browser context, whose downloads the test sets).
func startChromium(t *testing.T) func() context.Context {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Skipf("Chromium is not installed at %s; install it with: apt-get update && apt-get install -y chromium", chromiumPath)
	}
	if testing.Short() {
		t.Skip("browser tests skipped in -short mode")
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true), chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1100, 900),
	}
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	root, cancelRoot := chromedp.NewContext(alloc)
	if err := chromedp.Do(root); err != nil {
		cancelRoot()
		cancelAlloc()
		t.Fatalf("start Chromium: %v", err)
	}
	t.Cleanup(func() { cancelRoot(); cancelAlloc() })
	return func() context.Context {
		ctx, cancel := chromedp.NewContext(root)
		ctx, cancelT := context.WithTimeout(ctx, 3*time.Minute)
		t.Cleanup(func() { cancelT(); cancel() })
		return ctx
	}
}

func browse(t *testing.T, ctx context.Context, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("browser: %v", err)
	}
}

func clickLoad(t *testing.T, ctx context.Context, sel string) {
	t.Helper()
	if _, err := chromedp.Run(ctx, chromedp.WaitEvent(page.LoadEventFired, nil, chromedp.Click(chromedp.CSS(sel)))); err != nil {
		t.Fatalf("click %s: %v", sel, err)
	}
}

func pageText(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		t.Fatalf("text of %s: %v", sel, err)
	}
	return strings.TrimSpace(s)
}

// waitDownload waits for the one finished download in dir.
func waitDownload(t *testing.T, dir string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		names, _ := filepath.Glob(filepath.Join(dir, "keyport-*.jws.json"))
		if len(names) == 1 {
			if b, err := os.ReadFile(names[0]); err == nil && len(b) > 0 {
				return names[0]
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	entries, _ := os.ReadDir(dir)
	t.Fatalf("no key package downloaded into %s (%v)", dir, entries)
	return ""
}

// demoShots saves numbered full-page screenshots in the test's artifact
// directory, or under $KEYPORT_SCREENSHOT_DIR/<test>.
type demoShots struct {
	t   *testing.T
	dir string
	n   int
}

func newDemoShots(t *testing.T) *demoShots {
	dir := t.ArtifactDir()
	if d := os.Getenv("KEYPORT_SCREENSHOT_DIR"); d != "" {
		dir = filepath.Join(d, t.Name())
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return &demoShots{t: t, dir: dir}
}

func (s *demoShots) take(ctx context.Context, name string) {
	s.t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		s.t.Fatalf("screenshot %s: %v", name, err)
	}
	s.n++
	if err := os.WriteFile(filepath.Join(s.dir, fmt.Sprintf("%02d-%s.png", s.n, name)), png, 0o644); err != nil {
		s.t.Fatal(err)
	}
}
