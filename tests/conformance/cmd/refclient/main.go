// Command refclient is a reference client driver for a UDP relay server.
//
// It exists because a relay tested only by its own project's client proves
// little: a misreading of docs/protocol.md would be shared by both sides. This
// driver is built from the reference implementation's own packages
// (tailscale.com disco, net/packet and types/key), so every byte it sends
// and every check it makes on a reply comes from the code the protocol was
// written from. It talks to any server exposing the allocation API
// (POST /v0/relay/endpoint): relay-fleet's and cmd/refserver alike.
//
// It has two modes:
//
//	refclient --api URL [--relay-addr HOST:PORT] [--timeout D]
//	          [--reply-timeout D] [--realloc-after-bind new|same]
//
// runs the conformance checks, allocating fresh endpoints through the API.
//
//	refclient bind --server-disco discokey:HEX --relay-addr HOST:PORT --vni N
//	               --key privkey:HEX --key privkey:HEX [--packets N]
//	               [--reply-timeout D]
//
// drives one endpoint allocated elsewhere (a RelayEndpoint's status:
// serverDisco, addrPorts[0], vni) with the two clients' existing disco
// private keys (privkey:<64 hex>, the raw 32-byte Curve25519 key; client A
// holds the first, B the second): both 3-way bind handshakes, then
// --packets (default 10) data packets A->B and as many B->A, each required
// to arrive byte-identical. Its checks are bind_handshake_a,
// bind_handshake_b, relay_a_to_b and relay_b_to_a.
//
// Both print one JSON line per check to stdout,
// {"check": NAME, "ok": BOOL, "detail": TEXT}, and exit 1 if any check
// failed (2 on bad usage).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"time"
)

type options struct {
	api              string
	relayAddr        netip.AddrPort // zero: use the allocation's AddrPorts
	silence          time.Duration
	replyTimeout     time.Duration
	reallocAfterBind string
}

func parseFlags() (options, error) {
	var o options
	var relayAddr string
	flag.StringVar(&o.api, "api", "", "base URL of the allocation API, e.g. http://127.0.0.1:8080 (required)")
	flag.StringVar(&relayAddr, "relay-addr", "", "HOST:PORT of the relay's UDP socket (default: from the allocation's AddrPorts)")
	flag.DurationVar(&o.silence, "timeout", 300*time.Millisecond, "how long to wait before concluding that nothing arrives")
	flag.DurationVar(&o.replyTimeout, "reply-timeout", 2*time.Second, "how long to wait for an expected reply or relayed packet")
	flag.StringVar(&o.reallocAfterBind, "realloc-after-bind", "new",
		`what re-allocating a bound pair must give: "new" (docs/protocol.md: larger LamportID, old endpoint discarded) or "same" (tailscale.com v1.84.0: the existing endpoint, unchanged)`)
	flag.Usage = func() {
		fmt.Fprint(flag.CommandLine.Output(), checksUsage)
		flag.PrintDefaults()
		fmt.Fprint(flag.CommandLine.Output(), "\n"+bindUsage)
		bindFlagDefaults(flag.CommandLine.Output())
	}
	flag.Parse()
	if o.api == "" {
		return o, fmt.Errorf("--api is required")
	}
	if flag.NArg() != 0 {
		return o, fmt.Errorf("unexpected arguments: %q", flag.Args())
	}
	if o.reallocAfterBind != "new" && o.reallocAfterBind != "same" {
		return o, fmt.Errorf(`--realloc-after-bind must be "new" or "same"`)
	}
	if relayAddr != "" {
		ap, err := netip.ParseAddrPort(relayAddr)
		if err != nil {
			return o, fmt.Errorf("--relay-addr: %v", err)
		}
		o.relayAddr = ap
	}
	return o, nil
}

// result is one line of output.
type result struct {
	Check  string `json:"check"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

const checksUsage = `usage: refclient --api URL [flags]
       refclient bind --server-disco discokey:HEX --relay-addr HOST:PORT --vni N --key privkey:HEX --key privkey:HEX [flags]

Checks mode (the first form) runs every conformance check against the server
whose allocation API is at --api, allocating fresh endpoints for fresh keys.
Prints one JSON line per check and exits 1 if any failed, 2 on bad usage.

flags:
`

func main() {
	if len(os.Args) > 1 && os.Args[1] == "bind" {
		bindMain()
	}
	opts, err := parseFlags()
	if err != nil {
		fmt.Fprintf(os.Stderr, "refclient: %v\n", err)
		os.Exit(2)
	}
	h := newHarness(opts)
	out := json.NewEncoder(os.Stdout)
	out.SetEscapeHTML(false)
	failed := 0
	for _, c := range h.checks() {
		r := runCheck(c)
		if !r.OK {
			failed++
		}
		out.Encode(r)
	}
	h.close()
	if failed > 0 {
		fmt.Fprintf(os.Stderr, "refclient: %d check(s) failed\n", failed)
		os.Exit(1)
	}
}

// check is one named conformance check. run returns a detail for the report
// on success and an error on failure.
type check struct {
	name string
	run  func() (string, error)
}

func runCheck(c check) (r result) {
	r.Check = c.name
	defer func() {
		if p := recover(); p != nil {
			r.OK, r.Detail = false, fmt.Sprintf("panic: %v", p)
		}
	}()
	detail, err := c.run()
	if err != nil {
		return result{Check: c.name, OK: false, Detail: err.Error()}
	}
	return result{Check: c.name, OK: true, Detail: detail}
}
