// Command refclient-v1 is a client driver for a UDP relay server speaking
// protocol version 1, the form every reference client since tailscale.com
// v1.86 speaks (docs/protocol.md "Version 1").
//
// It exists so that a relay's version 1 rules are checked by the reference
// implementation's own code rather than by the relay's own client: every
// handshake message is built and every reply is opened with the disco,
// net/packet and types/key packages of tailscale.com v1.102.5. It talks to
// any server exposing the allocation API (POST /v0/relay/endpoint):
// cmd/refserver-v1 today, `relayfleet relay` once it speaks version 1.
//
//	refclient-v1 --api URL [--timeout D] [--reply-timeout D]
//
// runs every check on a fresh endpoint with fresh keys and sockets, and
// prints one JSON line per check to stdout, {"check": NAME, "ok": BOOL,
// "detail": TEXT}, the format of tests/conformance/cmd/refclient. It exits 1
// if any check failed, 2 on bad usage.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"
)

type options struct {
	api          string
	silence      time.Duration
	replyTimeout time.Duration
}

func parseFlags() (options, error) {
	var o options
	flag.StringVar(&o.api, "api", "", "base URL of the allocation API, e.g. http://127.0.0.1:8080 (required)")
	flag.DurationVar(&o.silence, "timeout", 300*time.Millisecond, "how long to wait before concluding that nothing arrives")
	flag.DurationVar(&o.replyTimeout, "reply-timeout", 2*time.Second, "how long to wait for an expected reply or relayed packet")
	flag.Parse()
	if o.api == "" {
		return o, fmt.Errorf("--api is required")
	}
	if flag.NArg() != 0 {
		return o, fmt.Errorf("unexpected arguments: %q", flag.Args())
	}
	return o, nil
}

// result is one line of output.
type result struct {
	Check  string `json:"check"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// check is one named check: run returns a detail on success, an error on
// failure.
type check struct {
	name string
	run  func() (string, error)
}

func main() {
	opts, err := parseFlags()
	if err != nil {
		fmt.Fprintf(os.Stderr, "refclient-v1: %v\n", err)
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
		fmt.Fprintf(os.Stderr, "refclient-v1: %d check(s) failed\n", failed)
		os.Exit(1)
	}
}

func runCheck(c check) (r result) {
	defer func() {
		if p := recover(); p != nil {
			r = result{Check: c.name, OK: false, Detail: fmt.Sprintf("panic: %v", p)}
		}
	}()
	detail, err := c.run()
	if err != nil {
		return result{Check: c.name, OK: false, Detail: err.Error()}
	}
	return result{Check: c.name, OK: true, Detail: detail}
}
