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

// Every datagram is built and read with the reference's own code:
// packet.GeneveHeader for the underlay header, the disco message types and
// key.DiscoShared Seal/Open for the control frames.

// geneveHeader is the header of a control (disco) or data (WireGuard)
// packet on vni.
func geneveHeader(vni uint32, control bool) packet.GeneveHeader {
	gh := packet.GeneveHeader{Control: control, Protocol: packet.GeneveProtocolWireGuard}
	if control {
		gh.Protocol = packet.GeneveProtocolDisco
	}
	gh.VNI.Set(vni)
	return gh
}

// withGeneve returns a datagram: the encoded Geneve header, then payload.
func withGeneve(gh packet.GeneveHeader, payload []byte) []byte {
	b := make([]byte, packet.GeneveFixedHeaderLength, packet.GeneveFixedHeaderLength+len(payload))
	if err := gh.Encode(b); err != nil {
		panic(fmt.Sprintf("encoding %+v: %v", gh, err))
	}
	return append(b, payload...)
}

// controlPacket is a control datagram on headerVNI carrying msg sealed from
// the sender's private key to the receiver's public key.
func controlPacket(headerVNI uint32, from key.DiscoPrivate, to key.DiscoPublic, msg disco.Message) []byte {
	frame := []byte(disco.Magic)
	frame = from.Public().AppendTo(frame)
	frame = append(frame, from.Shared(to).Seal(msg.AppendMarshal(nil))...)
	return withGeneve(geneveHeader(headerVNI, true), frame)
}

// dataPacket is a data (WireGuard) datagram on vni.
func dataPacket(vni uint32, payload []byte) []byte {
	return withGeneve(geneveHeader(vni, false), payload)
}

// openChallenge checks that b is a control packet on vni sealed by server
// to me carrying a BindUDPRelayEndpointChallenge, and returns its body.
func openChallenge(b []byte, vni uint32, me key.DiscoPrivate, server key.DiscoPublic) (disco.BindUDPRelayEndpointCommon, error) {
	var zero disco.BindUDPRelayEndpointCommon
	var gh packet.GeneveHeader
	if err := gh.Decode(b); err != nil {
		return zero, fmt.Errorf("reply of %d bytes: %v", len(b), err)
	}
	if want := geneveHeader(vni, true); gh != want {
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
		return zero, fmt.Errorf("reply is %s, want bind-udp-relay-endpoint-challenge", disco.MessageSummary(msg))
	}
	return ch.BindUDPRelayEndpointCommon, nil
}

// describe summarises an unexpected datagram for a failure detail.
func describe(b []byte, from netip.AddrPort) string {
	var gh packet.GeneveHeader
	if err := gh.Decode(b); err != nil {
		return fmt.Sprintf("%d bytes from %v", len(b), from)
	}
	return fmt.Sprintf("%d bytes from %v (control=%v protocol=%#04x vni=%d)", len(b), from, gh.Control, gh.Protocol, gh.VNI.Get())
}

// sameBytes reports whether got equals want, with a short explanation.
func sameBytes(got, want []byte) error {
	if !bytes.Equal(got, want) {
		return fmt.Errorf("got % x, want % x", got, want)
	}
	return nil
}
