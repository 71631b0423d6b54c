// Command refserver-v1 runs the reference UDP relay server of tailscale.com
// v1.102.5 (udprelay.NewServer, protocol version 1) behind the same HTTP
// allocation API as `relayfleet relay` and the v1.84.0 refserver
// (tests/conformance/cmd/refserver), so that one test suite can drive any of
// them.
//
// The server is built with the minimum it needs on a machine without
// internet: static addresses only (no interface scan, cloud metadata, STUN or
// DERP), no control knobs, and a private metrics registry.
//
//	refserver-v1 [--port N] [--api-listen HOST:PORT] [--addr IPv4]...
//
// On startup it prints one JSON ready line to stdout,
// {"ready": true, "udp_port": N, "api": "host:port", "server_disco": "discokey:…"};
// all logs go to stderr. SIGINT/SIGTERM shut it down cleanly.
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
	"tailscale.com/types/views"
	"tailscale.com/util/usermetric"
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
		// The reference binds IPv6 on a port of its own, which this command
		// does not report: only IPv4 addresses are advertised.
		return fmt.Errorf("%s: only IPv4 addresses are advertised", s)
	}
	*l = append(*l, a)
	return nil
}

type config struct {
	port      uint
	apiListen string
	addrs     addrList
}

func parseFlags() config {
	var c config
	flag.UintVar(&c.port, "port", 0, "UDP port of the relay (0 = any free port)")
	flag.StringVar(&c.apiListen, "api-listen", "127.0.0.1:0", "HOST:PORT of the HTTP allocation API")
	flag.Var(&c.addrs, "addr", "IPv4 address advertised in AddrPorts, joined with the bound UDP port (repeatable; default 127.0.0.1)")
	flag.Parse()
	if flag.NArg() != 0 {
		log.Fatalf("unexpected arguments: %q", flag.Args())
	}
	if c.port > 65535 {
		log.Fatalf("--port %d out of 0..65535", c.port)
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
	ServerDisco string `json:"server_disco"`
}

func main() {
	log.SetOutput(os.Stderr)
	log.SetPrefix("refserver-v1: ")
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	cfg := parseFlags()

	// Catch the signals first, so that one arriving during startup still
	// ends in a clean shutdown.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	srv, err := udprelay.NewServer(log.Printf, uint16(cfg.port), true, new(usermetric.Registry), nil)
	if err != nil {
		log.Fatalf("udprelay.NewServer: %v", err)
	}
	defer srv.Close()
	udpPort, err := readUint16Field(srv, "uc4Port")
	if err != nil {
		srv.Close()
		log.Fatalf("reading the bound port: %v", err)
	}
	disco, err := serverDisco(srv)
	if err != nil {
		srv.Close()
		log.Fatalf("reading the server's disco key: %v", err)
	}
	addrPorts := make([]netip.AddrPort, len(cfg.addrs))
	for i, a := range cfg.addrs {
		addrPorts[i] = netip.AddrPortFrom(a, udpPort)
	}
	srv.SetStaticAddrPorts(views.SliceOf(addrPorts))

	ln, err := net.Listen("tcp", cfg.apiListen)
	if err != nil {
		srv.Close()
		log.Fatalf("api listen: %v", err)
	}
	httpSrv := &http.Server{Handler: newAPI(srv), ReadHeaderTimeout: 10 * time.Second}

	ready := readyLine{Ready: true, UDPPort: int(udpPort), API: ln.Addr().String(), ServerDisco: disco.String()}
	if err := json.NewEncoder(os.Stdout).Encode(ready); err != nil {
		srv.Close()
		log.Fatalf("writing ready line: %v", err)
	}
	log.Printf("relay on udp port %d, advertising %v; api on http://%s", udpPort, addrPorts, ln.Addr())

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

// udprelay.Server at v1.102.5 exposes neither its bound port nor its disco
// key. Both are needed before the first allocation (the port goes into the
// static AddrPorts, the key into the ready line), so they are read, read
// only, from its unexported fields. A renamed field fails startup loudly.

// readUint16Field reads the unexported uint16 field name of srv.
func readUint16Field(srv *udprelay.Server, name string) (uint16, error) {
	f := reflect.ValueOf(srv).Elem().FieldByName(name)
	if !f.IsValid() || f.Kind() != reflect.Uint16 {
		return 0, fmt.Errorf("udprelay.Server has no uint16 field %q", name)
	}
	return uint16(f.Uint()), nil
}

// serverDisco reads the server's disco public key from its discoPublic field.
func serverDisco(srv *udprelay.Server) (key.DiscoPublic, error) {
	var k key.DiscoPublic
	f := reflect.ValueOf(srv).Elem().FieldByName("discoPublic")
	if !f.IsValid() || f.Type() != reflect.TypeOf(k) {
		return k, errors.New("udprelay.Server has no key.DiscoPublic field discoPublic")
	}
	raw := f.FieldByName("k")
	if !raw.IsValid() || raw.Kind() != reflect.Array || raw.Len() != key.DiscoPublicRawLen {
		return k, errors.New("key.DiscoPublic's layout changed")
	}
	text := []byte("discokey:")
	for i := range raw.Len() {
		text = fmt.Appendf(text, "%02x", raw.Index(i).Uint())
	}
	if err := k.UnmarshalText(text); err != nil {
		return k, err
	}
	if k.IsZero() {
		return k, errors.New("the server's disco key is zero")
	}
	return k, nil
}
