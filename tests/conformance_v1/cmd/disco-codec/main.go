// Command disco-codec is the reference's disco message codec at tailscale.com
// v1.102.5, driven over stdin and stdout, so that relay-fleet's own codecs
// (relay/protocol/disco.py) can be checked byte for byte against it.
//
// It reads one JSON object per line and writes one JSON object per line:
//
//	{"type": NAME, "message": FIELDS}  ->  {"hex": PAYLOAD}
//	{"hex": PAYLOAD}                   ->  {"type": NAME, "message": FIELDS} or {"error": TEXT}
//
// PAYLOAD is a message's plaintext (type, version, body) in hex, as the
// reference's AppendMarshal writes it and its disco.Parse reads it. NAME is
// the reference's type name (CallMeMaybeVia, AllocateUDPRelayEndpointRequest,
// AllocateUDPRelayEndpointResponse, BindUDPRelayEndpoint,
// BindUDPRelayEndpointChallenge, BindUDPRelayEndpointAnswer) and FIELDS are
// that Go struct in encoding/json's form: keys as "discokey:…", addresses as
// "ip:port", durations as integer nanoseconds, the challenge as 32 numbers.
// A line that cannot be read ends the program with status 2.
package main

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"reflect"

	"tailscale.com/disco"
)

// messages makes an empty message of each type this program encodes.
var messages = map[string]func() disco.Message{
	"CallMeMaybeVia":                   func() disco.Message { return new(disco.CallMeMaybeVia) },
	"AllocateUDPRelayEndpointRequest":  func() disco.Message { return new(disco.AllocateUDPRelayEndpointRequest) },
	"AllocateUDPRelayEndpointResponse": func() disco.Message { return new(disco.AllocateUDPRelayEndpointResponse) },
	"BindUDPRelayEndpoint":             func() disco.Message { return new(disco.BindUDPRelayEndpoint) },
	"BindUDPRelayEndpointChallenge":    func() disco.Message { return new(disco.BindUDPRelayEndpointChallenge) },
	"BindUDPRelayEndpointAnswer":       func() disco.Message { return new(disco.BindUDPRelayEndpointAnswer) },
}

type request struct {
	Type    string          `json:"type"`
	Message json.RawMessage `json:"message"`
	Hex     *string         `json:"hex"`
}

type reply struct {
	Hex     string        `json:"hex,omitempty"`
	Type    string        `json:"type,omitempty"`
	Message disco.Message `json:"message,omitempty"`
	Error   string        `json:"error,omitempty"`
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 0, 1<<16), 1<<24)
	out := json.NewEncoder(os.Stdout)
	out.SetEscapeHTML(false)
	for line := 1; in.Scan(); line++ {
		r, err := answer(in.Bytes())
		if err != nil {
			fmt.Fprintf(os.Stderr, "disco-codec: line %d: %v\n", line, err)
			os.Exit(2)
		}
		if err := out.Encode(r); err != nil {
			fmt.Fprintf(os.Stderr, "disco-codec: %v\n", err)
			os.Exit(2)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintf(os.Stderr, "disco-codec: %v\n", err)
		os.Exit(2)
	}
}

// answer encodes a described message, or parses a hex payload.
func answer(line []byte) (reply, error) {
	var req request
	if err := json.Unmarshal(line, &req); err != nil {
		return reply{}, err
	}
	if req.Hex != nil {
		payload, err := hex.DecodeString(*req.Hex)
		if err != nil {
			return reply{}, err
		}
		m, err := disco.Parse(payload)
		if err != nil {
			return reply{Error: err.Error()}, nil
		}
		return reply{Type: reflect.TypeOf(m).Elem().Name(), Message: m}, nil
	}
	newMessage, ok := messages[req.Type]
	if !ok {
		return reply{}, fmt.Errorf("unknown message type %q", req.Type)
	}
	m := newMessage()
	if err := json.Unmarshal(req.Message, m); err != nil {
		return reply{}, fmt.Errorf("%s: %w", req.Type, err)
	}
	return reply{Hex: hex.EncodeToString(m.AppendMarshal(nil))}, nil
}
