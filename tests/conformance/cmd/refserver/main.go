// Command refserver runs the reference UDP relay server, udprelay.NewServer
// from tailscale.com (the version pinned in go.mod), behind the same HTTP
// allocation API as `relayfleet relay`.
//
// It exists so that the conformance tests can run one test suite against
// both servers: whatever passes against relay-fleet must also pass against
// the reference implementation, and vice versa. One known difference:
// the protocol relay-fleet follows (docs/protocol.md) discards that endpoint, but at
// v1.84.0 re-allocating a pair that is already bound returns the existing
// endpoint instead of a new one (refclient --realloc-after-bind=same).
//
// On startup it prints one JSON "ready" line to stdout; all logs go to
// stderr. SIGINT/SIGTERM shut it down cleanly.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"reflect"
	"syscall"
	"time"

	"tailscale.com/net/udprelay"
	"tailscale.com/types/key"
)

// addrList is a repeatable --addr flag.
type addrList []netip.Addr

func (l *addrList) String() string { return fmt.Sprint([]netip.Addr(*l)) }

func (l *addrList) Set(s string) error {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return err
	}
	if !a.Is4() {
		// The reference listens on udp4 only ("IPv6 is not yet supported"),
		// so advertising anything else would hand out an unreachable address.
		return fmt.Errorf("%s: the reference server only serves IPv4", s)
	}
	*l = append(*l, a)
	return nil
}

type config struct {
	port      int
	apiListen string
	addrs     addrList
}

func parseFlags() config {
	var c config
	flag.IntVar(&c.port, "port", 0, "UDP port of the relay (0 = any free port)")
	flag.StringVar(&c.apiListen, "api-listen", "127.0.0.1:0", "HOST:PORT of the HTTP allocation API")
	flag.Var(&c.addrs, "addr", "IPv4 address advertised in AddrPorts, joined with the bound UDP port (repeatable; default 127.0.0.1)")
	flag.Parse()
	if flag.NArg() != 0 {
		log.Fatalf("unexpected arguments: %q", flag.Args())
	}
	if len(c.addrs) == 0 {
		c.addrs = addrList{netip.MustParseAddr("127.0.0.1")}
	}
	return c
}

// readyLine is the single line printed on stdout once both sockets are bound.
type readyLine struct {
	Ready       bool   `json:"ready"`
	UDPPort     int    `json:"udp_port"`
	API         string `json:"api"`
	ServerDisco string `json:"server_disco,omitempty"`
}

func main() {
	log.SetOutput(os.Stderr)
	log.SetPrefix("refserver: ")
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	cfg := parseFlags()

	// Catch the signals first, so that one arriving during startup (say,
	// right after the ready line) still ends in a clean shutdown.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	srv, udpPort, err := udprelay.NewServer(cfg.port, cfg.addrs)
	if err != nil {
		log.Fatalf("udprelay.NewServer: %v", err)
	}
	defer srv.Close()

	ln, err := net.Listen("tcp", cfg.apiListen)
	if err != nil {
		srv.Close()
		log.Fatalf("api listen: %v", err)
	}
	httpSrv := &http.Server{Handler: newAPI(srv), ReadHeaderTimeout: 10 * time.Second}

	ready := readyLine{Ready: true, UDPPort: udpPort, API: ln.Addr().String()}
	if k, ok := serverDisco(srv); ok {
		ready.ServerDisco = k.String()
	}
	if err := json.NewEncoder(os.Stdout).Encode(ready); err != nil {
		srv.Close()
		log.Fatalf("writing ready line: %v", err)
	}
	log.Printf("relay on udp port %d, advertising %v; api on http://%s", udpPort, cfg.addrs, ln.Addr())

	serve(ctx, httpSrv, ln)
	log.Printf("stopped")
}

// serve serves the API until ctx is done (a signal), then shuts it down.
func serve(ctx context.Context, httpSrv *http.Server, ln net.Listener) {
	errc := make(chan error, 1)
	go func() { errc <- httpSrv.Serve(ln) }()
	select {
	case err := <-errc:
		log.Fatalf("api: %v", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := httpSrv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		log.Printf("api shutdown: %v", err)
	}
}

// serverDisco reads the server's disco public key. udprelay.Server has no
// accessor for it, and allocating a throw-away endpoint to learn it would
// consume a LamportID and a VNI (shifting every later allocation), so it is
// read, read-only, from the unexported field via reflect. If the field is
// ever renamed this reports false and the ready line omits the key.
func serverDisco(srv *udprelay.Server) (k key.DiscoPublic, ok bool) {
	f := reflect.ValueOf(srv).Elem().FieldByName("discoPublic")
	if !f.IsValid() || f.Type() != reflect.TypeOf(key.DiscoPublic{}) {
		return k, false
	}
	raw := f.FieldByName("k")
	if !raw.IsValid() || raw.Kind() != reflect.Array || raw.Len() != 32 {
		return k, false
	}
	hex := make([]byte, 0, 64)
	for i := range 32 {
		hex = fmt.Appendf(hex, "%02x", raw.Index(i).Uint())
	}
	if err := k.UnmarshalText([]byte("discokey:" + string(hex))); err != nil || k.IsZero() {
		return k, false
	}
	return k, true
}
