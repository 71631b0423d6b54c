package main

import (
	"encoding/json"
	"fmt"
	"strings"

	"tailscale.com/types/key"
)

// The allocation API checks, plus re-allocation before bind (an API answer
// whose endpoint must stay usable).

func (h *harness) checkHealthz() (string, error) {
	return "200 ok", h.api.healthz()
}

func (h *harness) checkAllocate() (string, error) {
	a, b := key.NewDisco(), key.NewDisco()
	al, err := h.api.allocate(a.Public(), b.Public())
	if err != nil {
		return "", err
	}
	if err := validateAllocation(al); err != nil {
		return "", err
	}
	return al.body, nil
}

func (h *harness) checkLamportIncreases() (string, error) {
	var prev allocation
	for i := range 3 {
		al, err := h.api.allocate(key.NewDisco().Public(), key.NewDisco().Public())
		if err != nil {
			return "", err
		}
		if i > 0 {
			if al.ep.ServerDisco.Compare(prev.ep.ServerDisco) != 0 {
				return "", fmt.Errorf("ServerDisco changed between allocations")
			}
			if al.ep.LamportID <= prev.ep.LamportID {
				return "", fmt.Errorf("LamportID %d after %d for a new pair", al.ep.LamportID, prev.ep.LamportID)
			}
			if al.ep.VNI == prev.ep.VNI {
				return "", fmt.Errorf("two live allocations share VNI %d", al.ep.VNI)
			}
		}
		prev = al
	}
	return "three new pairs: increasing LamportIDs, distinct VNIs, one ServerDisco", nil
}

func (h *harness) checkRejectMalformedJSON() (string, error) {
	bodies := []string{``, `{"DiscoKeys": [`, `not json`, `{"DiscoKeys": [1, 2]}`, `{"DiscoKeys": "x"}`}
	for _, b := range bodies {
		if err := h.api.expectBadRequest(fmt.Sprintf("body %q", b), []byte(b)); err != nil {
			return "", err
		}
	}
	return fmt.Sprintf("%d malformed bodies answered 400", len(bodies)), nil
}

func (h *harness) checkRejectWrongKeyCount() (string, error) {
	k := func() string { return key.NewDisco().Public().String() }
	bodies := map[string]any{
		"no DiscoKeys": map[string]any{},
		"0 keys":       map[string]any{"DiscoKeys": []string{}},
		"1 key":        map[string]any{"DiscoKeys": []string{k()}},
		"3 keys":       map[string]any{"DiscoKeys": []string{k(), k(), k()}},
	}
	return h.expectAllBadRequests(bodies)
}

func (h *harness) checkRejectMalformedKey() (string, error) {
	good := key.NewDisco().Public().String()
	hex := strings.TrimPrefix(good, "discokey:")
	bad := map[string]string{
		"no prefix":      hex,
		"wrong prefix":   "nodekey:" + hex,
		"short hex":      good[:len(good)-2],
		"long hex":       good + "00",
		"non-hex digit":  good[:len(good)-1] + "g",
		"empty string":   "",
		"trailing space": good + " ",
	}
	bodies := map[string]any{}
	for name, k := range bad {
		bodies[name] = map[string]any{"DiscoKeys": []string{good, k}}
	}
	return h.expectAllBadRequests(bodies)
}

func (h *harness) checkRejectServerKey() (string, error) {
	al, err := h.api.allocate(key.NewDisco().Public(), key.NewDisco().Public())
	if err != nil {
		return "", err
	}
	server := al.ep.ServerDisco.String()
	bodies := map[string]any{
		"server key first":  map[string]any{"DiscoKeys": []string{server, key.NewDisco().Public().String()}},
		"server key second": map[string]any{"DiscoKeys": []string{key.NewDisco().Public().String(), server}},
	}
	return h.expectAllBadRequests(bodies)
}

func (h *harness) expectAllBadRequests(bodies map[string]any) (string, error) {
	for what, body := range bodies {
		raw, _ := json.Marshal(body)
		if err := h.api.expectBadRequest(what, raw); err != nil {
			return "", err
		}
	}
	return fmt.Sprintf("%d requests answered 400 with a one-line reason", len(bodies)), nil
}

func (h *harness) checkReallocBeforeBind() (string, error) {
	s, err := h.newSession(false)
	if err != nil {
		return "", err
	}
	// Same pair, keys in the other order (the pair is unordered): once with
	// nobody bound, once with A bound and B not.
	if err := s.expectSameAllocation("nobody bound"); err != nil {
		return "", err
	}
	if err := s.handshake(s.a); err != nil {
		return "", err
	}
	if err := s.expectSameAllocation("A bound, B not"); err != nil {
		return "", err
	}
	if err := s.handshake(s.b); err != nil {
		return "", fmt.Errorf("endpoint unusable after re-allocation: %v", err)
	}
	return fmt.Sprintf("same VNI %d and LamportID %d twice", s.ep.VNI, s.ep.LamportID), s.relaysBothWays()
}

// expectSameAllocation re-allocates the session's pair (as B, A) and
// requires the existing endpoint back.
func (s *session) expectSameAllocation(when string) error {
	al, err := s.h.api.allocate(s.b.key.Public(), s.a.key.Public())
	if err != nil {
		return err
	}
	if al.ep.VNI != s.ep.VNI || al.ep.LamportID != s.ep.LamportID || al.ep.ServerDisco.Compare(s.ep.ServerDisco) != 0 {
		return fmt.Errorf("%s: re-allocation gave VNI %d LamportID %d, want the existing VNI %d LamportID %d",
			when, al.ep.VNI, al.ep.LamportID, s.ep.VNI, s.ep.LamportID)
	}
	return nil
}
