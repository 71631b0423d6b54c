package main

import (
	"fmt"
	"net"
	"time"

	"tailscale.com/disco"
	"tailscale.com/types/key"
)

// checks lists every check in the order it runs. Each uses its own fresh
// endpoint, keys and sockets, so checks do not interact. Every "nothing
// arrives" step is followed by a step that must succeed on the same
// endpoint, so that silence from a dead server can never pass.
func (h *harness) checks() []check {
	return []check{
		{"allocation", h.checkAllocation},
		{"bind_handshake", h.checkBindHandshake},
		{"relay_both_ways", h.checkRelayBothWays},
		{"bind_repeated_every_one_answered", h.checkBindRepeated},
		{"rebind_new_source", h.checkRebindNewSource},
		{"wrong_sealed_vni_no_challenge", h.checkWrongSealedVNI},
		{"wrong_remote_key_no_challenge", h.checkWrongRemoteKey},
		{"generation_zero_no_challenge", h.checkGenerationZero},
		{"wrong_challenge_no_bind", h.checkWrongChallenge},
		{"answer_from_other_source_no_bind", h.checkAnswerOtherSource},
		{"stale_generation_answer_no_bind", h.checkStaleGeneration},
		{"data_from_unknown_source_dropped", h.checkDataUnknownSource},
	}
}

// --- allocation, handshake, relaying ---

func (h *harness) checkAllocation() (string, error) {
	a, b := key.NewDisco(), key.NewDisco()
	ep, err := h.api.allocate(a.Public(), b.Public())
	if err != nil {
		return "", err
	}
	if want := key.NewSortedPairOfDiscoPublic(a.Public(), b.Public()).Get(); ep.ClientDisco != want {
		return "", fmt.Errorf("ClientDisco %v, want the two keys in sorted order %v", ep.ClientDisco, want)
	}
	if ep.ServerDisco.IsZero() || ep.LamportID == 0 || ep.VNI == 0 || ep.VNI >= 1<<24 || len(ep.AddrPorts) == 0 {
		return "", fmt.Errorf("ServerDisco %v LamportID %d VNI %d AddrPorts %v: want a key, LamportID > 0, VNI in 1..2^24-1, an address",
			ep.ServerDisco.ShortString(), ep.LamportID, ep.VNI, ep.AddrPorts)
	}
	if ep.BindLifetime.Duration != 30*time.Second || ep.SteadyStateLifetime.Duration != 5*time.Minute {
		return "", fmt.Errorf("lifetimes %v/%v, want 30s/5m0s", ep.BindLifetime.Duration, ep.SteadyStateLifetime.Duration)
	}
	return fmt.Sprintf("VNI %d LamportID %d at %v, ClientDisco sorted", ep.VNI, ep.LamportID, ep.AddrPorts), nil
}

func (h *harness) checkBindHandshake() (string, error) {
	s, err := h.newSession()
	if err != nil {
		return "", err
	}
	if err := s.handshakeBoth(); err != nil {
		return "", err
	}
	return fmt.Sprintf("both clients got a sealed challenge echoing VNI %d, generation and RemoteKey via %v", s.ep.VNI, s.relay), nil
}

func (h *harness) checkRelayBothWays() (string, error) {
	s, err := h.newSession()
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

func (h *harness) checkBindRepeated() (string, error) {
	s, err := h.newSession()
	if err != nil {
		return "", err
	}
	if err := s.handshake(s.b); err != nil {
		return "", err
	}
	first := s.a.nextGeneration()
	for range 2 {
		if _, err := s.bind(s.a, s.a.conn, first); err != nil {
			return "", err
		}
	}
	ch, err := s.bind(s.a, s.a.conn, s.a.nextGeneration())
	if err != nil {
		return "", err
	}
	if err := s.answer(s.a, s.a.conn, ch); err != nil {
		return "", err
	}
	return "two binds of one generation and one of the next each got a challenge; the last one binds", s.relaysBothWays()
}

func (h *harness) checkRebindNewSource() (string, error) {
	s, err := h.newSession()
	if err != nil {
		return "", err
	}
	if err := s.handshakeBoth(); err != nil {
		return "", err
	}
	if err := s.relaysBothWays(); err != nil {
		return "", err
	}
	old := s.a.conn
	if s.a.conn, err = h.socket(); err != nil {
		return "", err
	}
	if err := s.handshake(s.a); err != nil {
		return "", fmt.Errorf("re-bind: %v", err)
	}
	if err := s.relaysBothWays(); err != nil {
		return "", fmt.Errorf("after A re-bound: %v", err)
	}
	// The old address is no longer A's: what it sends goes nowhere, and
	// B's traffic (B never re-bound) reaches only the new one.
	if err := s.send(old, s.randomData()); err != nil {
		return "", err
	}
	if err := s.send(s.b.conn, s.randomData()); err != nil {
		return "", err
	}
	if _, err := h.receive(s.a.conn, s.relay); err != nil {
		return "", fmt.Errorf("B->A after A re-bound: %v", err)
	}
	if err := h.silent(old, s.b.conn); err != nil {
		return "", fmt.Errorf("after A re-bound: %v", err)
	}
	return fmt.Sprintf("A moved from %v to %v with generation %d; traffic follows both ways, B stayed bound, the old address is dropped",
		old.LocalAddr(), s.a.conn.LocalAddr(), s.a.generation), nil
}

// --- drop rules ---

// bindIgnored binds B, sends A's Binds with the given bodies from A's socket
// and requires no reply, then requires a valid handshake to bind A and the
// pair to relay, so that the silence cannot come from a dead server or
// endpoint.
func (s *session) bindIgnored(what string, bodies ...disco.BindUDPRelayEndpointCommon) (string, error) {
	if err := s.handshake(s.b); err != nil {
		return "", err
	}
	for _, m := range bodies {
		if err := s.sendBind(s.a, s.a.conn, m); err != nil {
			return "", err
		}
	}
	if err := s.h.silent(s.a.conn); err != nil {
		return "", fmt.Errorf("%s: %v", what, err)
	}
	if err := s.handshake(s.a); err != nil {
		return "", fmt.Errorf("valid bind after %s: %v", what, err)
	}
	return what + ": no challenge; a valid bind afterwards binds", s.relaysBothWays()
}

func (h *harness) checkWrongSealedVNI() (string, error) {
	s, err := h.newSession()
	if err != nil {
		return "", err
	}
	m := s.common(s.a, s.a.nextGeneration())
	m.VNI = s.ep.VNI%(1<<24-1) + 1 // another valid VNI; the Geneve header keeps the right one
	return s.bindIgnored(fmt.Sprintf("sealed VNI %d in a header of VNI %d", m.VNI, s.ep.VNI), m)
}

func (h *harness) checkWrongRemoteKey() (string, error) {
	s, err := h.newSession()
	if err != nil {
		return "", err
	}
	own := s.common(s.a, s.a.nextGeneration())
	own.RemoteKey = s.a.key.Public()
	stranger := s.common(s.a, s.a.nextGeneration())
	stranger.RemoteKey = key.NewDisco().Public()
	return s.bindIgnored("RemoteKey the sender's own key, then a stranger's", own, stranger)
}

func (h *harness) checkGenerationZero() (string, error) {
	s, err := h.newSession()
	if err != nil {
		return "", err
	}
	return s.bindIgnored("generation 0", s.common(s.a, 0))
}

// answerRejected requires A, whose wrong answer was just sent, not to be
// bound (probing from conns), then sends the right answer from A's socket
// and requires the endpoint to bind and relay.
func (s *session) answerRejected(what string, right disco.BindUDPRelayEndpointCommon, conns ...*net.UDPConn) (string, error) {
	if err := s.notBound(s.a, conns...); err != nil {
		return "", fmt.Errorf("%s: %v", what, err)
	}
	if err := s.answer(s.a, s.a.conn, right); err != nil {
		return "", err
	}
	if err := s.relaysBothWays(); err != nil {
		return "", fmt.Errorf("right answer after %s: %v", what, err)
	}
	return what + ": not bound; the right answer afterwards binds", nil
}

func (h *harness) checkWrongChallenge() (string, error) {
	s, ch, err := h.challengedA()
	if err != nil {
		return "", err
	}
	wrong := ch
	wrong.Challenge[0] ^= 0xff
	if err := s.answer(s.a, s.a.conn, wrong); err != nil {
		return "", err
	}
	return s.answerRejected("answer with one challenge byte flipped", ch, s.a.conn)
}

func (h *harness) checkAnswerOtherSource() (string, error) {
	s, ch, err := h.challengedA()
	if err != nil {
		return "", err
	}
	other, err := h.socket()
	if err != nil {
		return "", err
	}
	if err := s.answer(s.a, other, ch); err != nil {
		return "", err
	}
	return s.answerRejected("answer from another source port than the bind", ch, s.a.conn, other)
}

func (h *harness) checkStaleGeneration() (string, error) {
	s, stale, err := h.challengedA()
	if err != nil {
		return "", err
	}
	current, err := s.bind(s.a, s.a.conn, s.a.nextGeneration())
	if err != nil {
		return "", err
	}
	if err := s.answer(s.a, s.a.conn, stale); err != nil {
		return "", err
	}
	return s.answerRejected(fmt.Sprintf("answer of generation %d after a bind of %d", stale.Generation, current.Generation), current, s.a.conn)
}

func (h *harness) checkDataUnknownSource() (string, error) {
	s, err := h.newSession()
	if err != nil {
		return "", err
	}
	if err := s.handshakeBoth(); err != nil {
		return "", err
	}
	stranger, err := h.socket()
	if err != nil {
		return "", err
	}
	if err := s.send(stranger, s.randomData()); err != nil {
		return "", err
	}
	if err := h.silent(s.a.conn, s.b.conn, stranger); err != nil {
		return "", err
	}
	return "data on the VNI from a third address reaches no one; the bound pair still relays", s.relaysBothWays()
}

// challengedA starts a session with B bound and A's Bind answered with a
// Challenge, which it returns: where each answer check begins.
func (h *harness) challengedA() (*session, disco.BindUDPRelayEndpointCommon, error) {
	s, err := h.newSession()
	if err != nil {
		return nil, disco.BindUDPRelayEndpointCommon{}, err
	}
	if err := s.handshake(s.b); err != nil {
		return nil, disco.BindUDPRelayEndpointCommon{}, err
	}
	ch, err := s.bind(s.a, s.a.conn, s.a.nextGeneration())
	return s, ch, err
}
