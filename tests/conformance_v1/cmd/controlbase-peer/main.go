// Command controlbase-peer is the server side of the control protocol's Noise
// handshake and record framing at tailscale.com v1.102.5
// (control/controlbase.Server), on a loopback TCP port, so that relay-fleet's
// client (relay/tailnet/noise.py) can be checked against it over a real
// connection.
//
//	controlbase-peer [--machine-key mkey:…]
//
// It makes a fresh control key and prints one JSON ready line to stdout,
// {"port": N, "public_key": "mkey:…"}. For every connection it then prints
// one JSON line: {"peer": "mkey:…", "version": N} once a handshake succeeds,
// or {"error": TEXT} when it fails (printed before the connection closes).
// With --machine-key, a client with any other machine key is an error too.
//
// After a successful handshake it sends one record, a JSON line
// {"peer": "mkey:…", "version": N, "handshake_hash": HEX}, and then echoes
// every byte it receives until the client closes. Logs go to stderr.
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"sync"
	"time"

	"tailscale.com/control/controlbase"
	"tailscale.com/types/key"
)

// handshakeTimeout bounds a client that connects and never finishes its handshake.
const handshakeTimeout = 10 * time.Second

type ready struct {
	Port      int               `json:"port"`
	PublicKey key.MachinePublic `json:"public_key"`
}

type outcome struct {
	Peer          *key.MachinePublic `json:"peer,omitempty"`
	Version       int                `json:"version,omitempty"`
	HandshakeHash string             `json:"handshake_hash,omitempty"`
	Error         string             `json:"error,omitempty"`
}

// stdout serialises the JSON lines of concurrent connections.
type stdout struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (s *stdout) print(v any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enc.Encode(v); err != nil {
		log.Fatalf("writing stdout: %v", err)
	}
}

func main() {
	machineKeyText := flag.String("machine-key", "", "accept only this client machine key (mkey:…); default any")
	flag.Parse()
	if flag.NArg() != 0 {
		log.Fatalf("unexpected arguments: %q", flag.Args())
	}
	var wantPeer key.MachinePublic
	if *machineKeyText != "" {
		if err := wantPeer.UnmarshalText([]byte(*machineKeyText)); err != nil {
			log.Fatalf("--machine-key: %v", err)
		}
	}

	controlKey := key.NewMachine()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	out := &stdout{enc: json.NewEncoder(os.Stdout)}
	out.print(ready{Port: ln.Addr().(*net.TCPAddr).Port, PublicKey: controlKey.Public()})

	for {
		conn, err := ln.Accept()
		if err != nil {
			log.Fatalf("accept: %v", err)
		}
		go serve(conn, controlKey, wantPeer, out)
	}
}

func serve(conn net.Conn, controlKey key.MachinePrivate, wantPeer key.MachinePublic, out *stdout) {
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	defer cancel()
	noise, err := controlbase.Server(ctx, conn, controlKey, nil)
	if err != nil {
		out.print(outcome{Error: err.Error()})
		return
	}
	peer := noise.Peer()
	if !wantPeer.IsZero() && peer != wantPeer {
		out.print(outcome{Error: fmt.Sprintf("machine key %v, want %v", peer, wantPeer)})
		return
	}
	out.print(outcome{Peer: &peer, Version: noise.ProtocolVersion()})

	hash := noise.HandshakeHash()
	hello, err := json.Marshal(outcome{Peer: &peer, Version: noise.ProtocolVersion(), HandshakeHash: hex.EncodeToString(hash[:])})
	if err != nil {
		log.Fatalf("encoding hello: %v", err)
	}
	if _, err := noise.Write(append(hello, '\n')); err != nil {
		log.Printf("sending hello: %v", err)
		return
	}
	if _, err := io.Copy(noise, noise); err != nil {
		log.Printf("echo: %v", err)
	}
}
