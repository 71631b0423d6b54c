package main

import (
	"errors"
	"fmt"

	"tailscale.com/disco"
	"tailscale.com/net/packet"
	"tailscale.com/types/key"
)

// The wire checks: the handshake, relaying and the drop rules a client can
// reach, each on its own fresh pair of clients.

// --- the handshake and relaying ---

func (h *harness) checkBindHandshake() (string, error) {
	s, err := h.newSession(false)
	if err != nil {
		return "", err
	}
	if err := s.handshakeBoth(); err != nil {
		return "", err
	}
	return fmt.Sprintf("both clients got a sealed challenge on VNI %d via %v", s.ep.VNI, s.relay), nil
}

func (h *harness) checkRelayBothWays() (string, error) {
	s, err := h.newSession(false)
	if err != nil {
		return "", err
	}
	if err := s.handshakeBoth(); err != nil {
		return "", err
	}
	for range 3 {
		if err := s.relaysBothWays(); err != nil {
			return "", err
		}
	}
	return "3 packets each way relayed unchanged, header included", nil
}

func (h *harness) checkBindRetransmit() (string, error) {
	s, err := h.newSession(false)
	if err != nil {
		return "", err
	}
	first, err := s.bind(s.a, s.a.conn)
	if err != nil {
		return "", err
	}
	again, err := s.bind(s.a, s.a.conn)
	if err != nil {
		return "", fmt.Errorf("retransmitted bind: %v", err)
	}
	if first != again {
		return "", fmt.Errorf("retransmitted bind got a different challenge")
	}
	if err := s.answer(s.a, s.a.conn, again); err != nil {
		return "", err
	}
	if err := s.handshake(s.b); err != nil {
		return "", err
	}
	return "same challenge twice; handshake completes", s.relaysBothWays()
}

// --- drop rules ---

func (h *harness) checkWrongAnswer() (string, error) {
	s, err := h.newSession(false)
	if err != nil {
		return "", err
	}
	if err := s.handshake(s.b); err != nil {
		return "", err
	}
	ch, err := s.bind(s.a, s.a.conn)
	if err != nil {
		return "", err
	}
	wrong := ch
	wrong[0] ^= 0xff
	if err := s.answer(s.a, s.a.conn, wrong); err != nil {
		return "", err
	}
	if err := s.notBound("after A's wrong answer"); err != nil {
		return "", err
	}
	// The wrong answer changed nothing: the right one still binds.
	if err := s.answer(s.a, s.a.conn, ch); err != nil {
		return "", err
	}
	return "wrong answer: no bind; right answer afterwards binds", s.relaysBothWays()
}

func (h *harness) checkShortAnswer() (string, error) {
	s, err := h.newSession(false)
	if err != nil {
		return "", err
	}
	if err := s.handshake(s.b); err != nil {
		return "", err
	}
	ch, err := s.bind(s.a, s.a.conn)
	if err != nil {
		return "", err
	}
	// An Answer whose body holds only the first half of the challenge.
	payload := append([]byte{byte(disco.TypeBindUDPRelayEndpointAnswer), 0}, ch[:16]...)
	if err := s.send(s.a.conn, withGeneve(controlHeader(s.ep.VNI), sealedFrame(s.a.key, s.ep.ServerDisco, payload))); err != nil {
		return "", err
	}
	if err := s.notBound("after A's 16-byte answer"); err != nil {
		return "", err
	}
	if err := s.answer(s.a, s.a.conn, ch); err != nil {
		return "", err
	}
	return "truncated answer: no bind; full answer afterwards binds", s.relaysBothWays()
}

// notBound requires that B's data does not reach A and A's data does not
// reach B, i.e. the endpoint is not (yet) bound by both.
func (s *session) notBound(when string) error {
	if err := s.send(s.b.conn, dataPacket(s.ep.VNI, []byte("B to A"))); err != nil {
		return err
	}
	if err := s.send(s.a.conn, dataPacket(s.ep.VNI, []byte("A to B"))); err != nil {
		return err
	}
	if err := s.h.silent(s.a.conn, s.b.conn); err != nil {
		return fmt.Errorf("%s: data relayed, so the endpoint is bound: %v", when, err)
	}
	return nil
}

func (h *harness) checkBindSecondSource() (string, error) {
	s, err := h.newSession(false)
	if err != nil {
		return "", err
	}
	ch, err := s.bind(s.a, s.a.conn)
	if err != nil {
		return "", err
	}
	second, err := h.socket(s.relay.Addr())
	if err != nil {
		return "", err
	}
	if err := s.sendControl(s.a, second, s.ep.VNI, &disco.BindUDPRelayEndpoint{}); err != nil {
		return "", err
	}
	if err := h.silent(second, s.a.conn); err != nil {
		return "", fmt.Errorf("bind from a second source answered: %v", err)
	}
	// The first source is still A's: its answer binds, data flows there.
	if err := s.answer(s.a, s.a.conn, ch); err != nil {
		return "", err
	}
	if err := s.handshake(s.b); err != nil {
		return "", err
	}
	if err := s.relaysBothWays(); err != nil {
		return "", err
	}
	return "no challenge to the second source; first source binds and relays", h.silent(second)
}

func (h *harness) checkAnswerSecondSource() (string, error) {
	s, err := h.newSession(false)
	if err != nil {
		return "", err
	}
	if err := s.handshake(s.b); err != nil {
		return "", err
	}
	ch, err := s.bind(s.a, s.a.conn)
	if err != nil {
		return "", err
	}
	second, err := h.socket(s.relay.Addr())
	if err != nil {
		return "", err
	}
	if err := s.answer(s.a, second, ch); err != nil {
		return "", err
	}
	if err := s.send(s.b.conn, dataPacket(s.ep.VNI, []byte("B to A"))); err != nil {
		return "", err
	}
	if err := h.silent(s.a.conn, second); err != nil {
		return "", fmt.Errorf("correct answer from a second source bound A: %v", err)
	}
	if err := s.answer(s.a, s.a.conn, ch); err != nil {
		return "", err
	}
	return "answer from the second source: no bind; from the first: binds", s.relaysBothWays()
}

func (h *harness) checkDataBeforeBind() (string, error) {
	s, err := h.newSession(false)
	if err != nil {
		return "", err
	}
	if err := s.handshake(s.a); err != nil {
		return "", err
	}
	// B's address is known to the server (bind sent) but B is not bound.
	ch, err := s.bind(s.b, s.b.conn)
	if err != nil {
		return "", err
	}
	if err := s.notBound("A bound, B challenged"); err != nil {
		return "", err
	}
	if err := s.answer(s.b, s.b.conn, ch); err != nil {
		return "", err
	}
	return "nothing relayed until both bound; relayed afterwards", s.relaysBothWays()
}

func (h *harness) checkDataThirdAddress() (string, error) {
	s, err := h.newSession(false)
	if err != nil {
		return "", err
	}
	if err := s.handshakeBoth(); err != nil {
		return "", err
	}
	third, err := h.socket(s.relay.Addr())
	if err != nil {
		return "", err
	}
	if err := s.send(third, dataPacket(s.ep.VNI, []byte("from a stranger"))); err != nil {
		return "", err
	}
	if err := h.silent(s.a.conn, s.b.conn, third); err != nil {
		return "", fmt.Errorf("data from a third address: %v", err)
	}
	return "not forwarded; A<->B still relays", s.relaysBothWays()
}

func (h *harness) checkUnknownVNI() (string, error) {
	s, err := h.newSession(false)
	if err != nil {
		return "", err
	}
	unknown := []uint32{0, s.ep.VNI ^ 0x800000}
	for _, vni := range unknown {
		if err := s.sendControl(s.a, s.a.conn, vni, &disco.BindUDPRelayEndpoint{}); err != nil {
			return "", err
		}
	}
	if err := h.silent(s.a.conn); err != nil {
		return "", fmt.Errorf("bind on an unknown VNI answered: %v", err)
	}
	if err := s.handshakeBoth(); err != nil {
		return "", err
	}
	for _, vni := range unknown {
		if err := s.send(s.a.conn, dataPacket(vni, []byte("wrong VNI"))); err != nil {
			return "", err
		}
	}
	if err := h.silent(s.a.conn, s.b.conn); err != nil {
		return "", fmt.Errorf("data on an unknown VNI relayed: %v", err)
	}
	return fmt.Sprintf("VNIs %v: no challenge, no relaying", unknown), s.relaysBothWays()
}

func (h *harness) checkUnknownSender() (string, error) {
	s, err := h.newSession(false)
	if err != nil {
		return "", err
	}
	stranger := &client{name: "C", key: key.NewDisco(), conn: s.a.conn}
	if err := s.sendControl(stranger, s.a.conn, s.ep.VNI, &disco.BindUDPRelayEndpoint{}); err != nil {
		return "", err
	}
	if err := h.silent(s.a.conn); err != nil {
		return "", fmt.Errorf("bind from a key outside the pair answered: %v", err)
	}
	if err := s.handshakeBoth(); err != nil {
		return "", err
	}
	return "no challenge for a third key; the pair binds afterwards", s.relaysBothWays()
}

func (h *harness) checkMalformed() (string, error) {
	s, err := h.newSession(false)
	if err != nil {
		return "", err
	}
	for _, b := range malformedPackets(s) {
		if err := s.send(s.a.conn, b); err != nil {
			return "", err
		}
	}
	if err := h.silent(s.a.conn); err != nil {
		return "", fmt.Errorf("a malformed packet was answered: %v", err)
	}
	// None of them may have recorded A's address or otherwise moved state.
	if err := s.handshakeBoth(); err != nil {
		return "", fmt.Errorf("after malformed packets: %v", err)
	}
	return fmt.Sprintf("%d malformed packets: no reply; handshake works afterwards", len(malformedPackets(s))), s.relaysBothWays()
}

// malformedPackets are datagrams from A that the relay must drop silently.
func malformedPackets(s *session) [][]byte {
	vni, a, server := s.ep.VNI, s.a.key, s.ep.ServerDisco
	bind := (&disco.BindUDPRelayEndpoint{}).AppendMarshal(nil)
	frame := sealedFrame(a, server, bind)
	corrupt := append([]byte(nil), frame...)
	corrupt[len(corrupt)-1] ^= 0x01
	notDisco := controlHeader(vni)
	notDisco.Protocol = packet.GeneveProtocolWireGuard                            // control bit set
	asData := packet.GeneveHeader{Protocol: packet.GeneveProtocolDisco, VNI: vni} // control bit clear
	return [][]byte{
		{0x00},
		make([]byte, 7),
		withGeneve(controlHeader(vni), nil),
		withGeneve(controlHeader(vni), []byte("not a disco frame at all")),
		withGeneve(controlHeader(vni), frame[:len(disco.Magic)+key.DiscoPublicRawLen+10]),
		withGeneve(controlHeader(vni), corrupt),
		withGeneve(controlHeader(vni), sealedFrame(a, key.NewDisco().Public(), bind)),
		withGeneve(controlHeader(vni), sealedFrame(a, server, []byte{byte(disco.TypeBindUDPRelayEndpoint)})),
		withGeneve(controlHeader(vni), sealedFrame(a, server, []byte{0x7f, 0})),
		controlPacket(vni, a, server, &disco.Ping{}),
		controlPacket(vni, a, server, &disco.CallMeMaybe{}),
		controlPacket(vni, a, server, &disco.BindUDPRelayEndpointChallenge{}),
		withGeneve(notDisco, frame),
		withGeneve(asData, frame),
	}
}

func (h *harness) checkControlAfterClientBound() (string, error) {
	s, err := h.newSession(false)
	if err != nil {
		return "", err
	}
	ch, err := s.bind(s.a, s.a.conn)
	if err != nil {
		return "", err
	}
	if err := s.answer(s.a, s.a.conn, ch); err != nil {
		return "", err
	}
	if err := s.sendControl(s.a, s.a.conn, s.ep.VNI, &disco.BindUDPRelayEndpoint{}); err != nil {
		return "", err
	}
	if err := h.silent(s.a.conn); err != nil {
		return "", fmt.Errorf("bind from an already bound client answered: %v", err)
	}
	if err := s.handshake(s.b); err != nil {
		return "", err
	}
	return "bound A's bind ignored; B binds; relaying works", s.relaysBothWays()
}

func (h *harness) checkControlAfterEndpointBound() (string, error) {
	s, err := h.newSession(false)
	if err != nil {
		return "", err
	}
	if err := s.handshakeBoth(); err != nil {
		return "", err
	}
	moved, err := h.socket(s.relay.Addr())
	if err != nil {
		return "", err
	}
	if err := s.sendControl(s.a, s.a.conn, s.ep.VNI, &disco.BindUDPRelayEndpoint{}); err != nil {
		return "", err
	}
	if err := s.sendControl(s.b, moved, s.ep.VNI, &disco.BindUDPRelayEndpoint{}); err != nil {
		return "", err
	}
	if err := s.answer(s.b, moved, [32]byte{}); err != nil {
		return "", err
	}
	if err := h.silent(s.a.conn, s.b.conn, moved); err != nil {
		return "", fmt.Errorf("control packet on a bound endpoint answered: %v", err)
	}
	// B's addresses did not move: data still goes to its first socket.
	if err := s.relaysBothWays(); err != nil {
		return "", err
	}
	return "binds and answers ignored; relaying unchanged", h.silent(moved)
}

func (h *harness) checkReallocAfterBind() (string, error) {
	s, err := h.newSession(false)
	if err != nil {
		return "", err
	}
	if err := s.handshakeBoth(); err != nil {
		return "", err
	}
	al, err := h.api.allocate(s.a.key.Public(), s.b.key.Public())
	if err != nil {
		return "", err
	}
	if al.ep.ServerDisco.Compare(s.ep.ServerDisco) != 0 {
		return "", fmt.Errorf("ServerDisco changed")
	}
	if h.opts.reallocAfterBind == "same" {
		return reallocSame(s, al)
	}
	return reallocNew(s, al)
}

// reallocNew: docs/protocol.md's rule. The bound endpoint is discarded and a new
// one with a larger LamportID replaces it.
func reallocNew(s *session, al allocation) (string, error) {
	if al.ep.LamportID <= s.ep.LamportID {
		return "", fmt.Errorf("re-allocation after bind gave LamportID %d (VNI %d), want > %d",
			al.ep.LamportID, al.ep.VNI, s.ep.LamportID)
	}
	// The old endpoint no longer relays (if the VNI was reused, the new
	// endpoint on it is not bound yet, which must not relay either).
	if err := s.send(s.a.conn, dataPacket(s.ep.VNI, []byte("old endpoint"))); err != nil {
		return "", err
	}
	if err := s.h.silent(s.b.conn); err != nil {
		return "", fmt.Errorf("old endpoint (VNI %d) still relays: %v", s.ep.VNI, err)
	}
	old := s.ep
	s.ep = al.ep
	if err := s.handshakeBoth(); err != nil {
		return "", fmt.Errorf("new endpoint: %v", err)
	}
	if err := s.relaysBothWays(); err != nil {
		return "", fmt.Errorf("new endpoint: %v", err)
	}
	return fmt.Sprintf("LamportID %d -> %d, VNI %d -> %d; old stops relaying, new binds and relays",
		old.LamportID, al.ep.LamportID, old.VNI, al.ep.VNI), nil
}

// reallocSame: tailscale.com v1.84.0's rule. The existing endpoint is
// returned unchanged and keeps relaying.
func reallocSame(s *session, al allocation) (string, error) {
	if al.ep.LamportID != s.ep.LamportID || al.ep.VNI != s.ep.VNI {
		return "", fmt.Errorf("re-allocation after bind gave LamportID %d VNI %d, want the existing %d and %d (--realloc-after-bind=same)",
			al.ep.LamportID, al.ep.VNI, s.ep.LamportID, s.ep.VNI)
	}
	if err := s.relaysBothWays(); err != nil {
		return "", fmt.Errorf("existing endpoint after re-allocation: %v", err)
	}
	return fmt.Sprintf("same LamportID %d and VNI %d; endpoint keeps relaying (--realloc-after-bind=same)", al.ep.LamportID, al.ep.VNI), nil
}

func (h *harness) checkIPv6() (string, error) {
	if h.opts.relayAddr.IsValid() {
		return "skipped: --relay-addr given", nil
	}
	s, err := h.newSession(true)
	if errors.Is(err, errNoV6) {
		return "skipped: " + err.Error(), nil
	}
	if err != nil {
		return "", err
	}
	if err := s.handshakeBoth(); err != nil {
		return "", err
	}
	return fmt.Sprintf("bound and relayed via %v", s.relay), s.relaysBothWays()
}
