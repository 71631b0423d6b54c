package main

import (
	"bytes"
	"fmt"
	"net/netip"

	"go4.org/mem"
	"tailscale.com/disco"
	"tailscale.com/net/packet"
	"tailscale.com/types/key"
)

// Everything here builds or reads datagrams with the reference's own code:
// packet.GeneveHeader for the underlay header, disco message types and
// key.DiscoShared Seal/Open for the control frames.

// withGeneve returns a datagram: the encoded Geneve header, then payload.
func withGeneve(gh packet.GeneveHeader, payload []byte) []byte {
	b := make([]byte, packet.GeneveFixedHeaderLength, packet.GeneveFixedHeaderLength+len(payload))
	if err := gh.Encode(b); err != nil {
		panic(fmt.Sprintf("encoding %+v: %v", gh, err))
	}
	return append(b, payload...)
}

// controlHeader is the header of a disco control packet for vni.
func controlHeader(vni uint32) packet.GeneveHeader {
	return packet.GeneveHeader{Control: true, Protocol: packet.GeneveProtocolDisco, VNI: vni}
}

// sealedFrame is a disco frame: magic, sender's public key, then the
// payload sealed with the (sender private, receiver public) shared key.
func sealedFrame(from key.DiscoPrivate, to key.DiscoPublic, payload []byte) []byte {
	b := []byte(disco.Magic)
	b = from.Public().AppendTo(b)
	return append(b, from.Shared(to).Seal(payload)...)
}

// controlPacket is a complete control datagram carrying msg.
func controlPacket(vni uint32, from key.DiscoPrivate, to key.DiscoPublic, msg disco.Message) []byte {
	return withGeneve(controlHeader(vni), sealedFrame(from, to, msg.AppendMarshal(nil)))
}

// dataPacket is a complete data (non-control, WireGuard) datagram.
func dataPacket(vni uint32, payload []byte) []byte {
	return withGeneve(packet.GeneveHeader{Protocol: packet.GeneveProtocolWireGuard, VNI: vni}, payload)
}

// openChallenge checks that b is a control packet for vni sealed by server
// to me, and returns the challenge it carries.
func openChallenge(b []byte, vni uint32, me key.DiscoPrivate, server key.DiscoPublic) ([disco.BindUDPRelayEndpointChallengeLen]byte, error) {
	var zero [disco.BindUDPRelayEndpointChallengeLen]byte
	var gh packet.GeneveHeader
	if err := gh.Decode(b); err != nil {
		return zero, fmt.Errorf("reply of %d bytes: %v", len(b), err)
	}
	want := controlHeader(vni)
	if gh != want {
		return zero, fmt.Errorf("reply header %+v, want %+v", gh, want)
	}
	frame := b[packet.GeneveFixedHeaderLength:]
	sender, ok := disco.Source(frame)
	if !ok {
		return zero, fmt.Errorf("reply is not a disco frame (%d bytes)", len(frame))
	}
	if got := key.DiscoPublicFromRaw32(mem.B(sender)); got.Compare(server) != 0 {
		return zero, fmt.Errorf("reply sender %v, want the server's %v", got.ShortString(), server.ShortString())
	}
	payload, ok := me.Shared(server).Open(frame[len(disco.Magic)+key.DiscoPublicRawLen:])
	if !ok {
		return zero, fmt.Errorf("reply box does not open with the (client, server) shared key")
	}
	msg, err := disco.Parse(payload)
	if err != nil {
		return zero, fmt.Errorf("reply payload: %v", err)
	}
	ch, ok := msg.(*disco.BindUDPRelayEndpointChallenge)
	if !ok {
		return zero, fmt.Errorf("reply is %s, want BindUDPRelayEndpointChallenge", disco.MessageSummary(msg))
	}
	return ch.Challenge, nil
}

// describe summarises an unexpected datagram for a failure detail.
func describe(b []byte, from netip.AddrPort) string {
	var gh packet.GeneveHeader
	if err := gh.Decode(b); err != nil {
		return fmt.Sprintf("%d bytes from %v", len(b), from)
	}
	return fmt.Sprintf("%d bytes from %v (control=%v protocol=%#04x vni=%d)", len(b), from, gh.Control, gh.Protocol, gh.VNI)
}

// sameBytes reports whether got equals want, with a short explanation.
func sameBytes(got, want []byte) error {
	if !bytes.Equal(got, want) {
		return fmt.Errorf("got % x, want % x", got, want)
	}
	return nil
}
