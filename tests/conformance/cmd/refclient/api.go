package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"tailscale.com/net/udprelay/endpoint"
	"tailscale.com/types/key"
)

// apiClient talks to the allocation API of the server under test.
type apiClient struct {
	base string
	http *http.Client
}

func newAPIClient(base string) *apiClient {
	return &apiClient{base: strings.TrimRight(base, "/"), http: &http.Client{Timeout: 10 * time.Second}}
}

// allocation is a decoded 200 answer plus its raw JSON object.
type allocation struct {
	ep   endpoint.ServerEndpoint
	raw  map[string]json.RawMessage
	body string
}

// post sends body to POST /v0/relay/endpoint and returns status and body.
func (c *apiClient) post(body []byte) (int, string, http.Header, error) {
	resp, err := c.http.Post(c.base+"/v0/relay/endpoint", "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header, err
}

// allocate requests an endpoint for the pair (a, b) and decodes it with the
// reference's own endpoint.ServerEndpoint type, which is strict about every
// field's form.
func (c *apiClient) allocate(a, b key.DiscoPublic) (allocation, error) {
	req, _ := json.Marshal(map[string][]string{"DiscoKeys": {a.String(), b.String()}})
	status, body, _, err := c.post(req)
	if err != nil {
		return allocation{}, fmt.Errorf("POST /v0/relay/endpoint: %v", err)
	}
	if status != http.StatusOK {
		return allocation{}, fmt.Errorf("POST /v0/relay/endpoint: status %d: %q", status, body)
	}
	al := allocation{body: strings.TrimSpace(body)}
	if err := json.Unmarshal([]byte(body), &al.ep); err != nil {
		return al, fmt.Errorf("allocation %q does not decode as endpoint.ServerEndpoint: %v", body, err)
	}
	if err := json.Unmarshal([]byte(body), &al.raw); err != nil {
		return al, fmt.Errorf("allocation %q is not a JSON object: %v", body, err)
	}
	return al, nil
}

// wantAllocationKeys are the exact members of an allocation response at this
// version. The API of later versions also answers ClientDisco (the two client
// keys, sorted), which this version's clients ignore; it is checked apart.
var wantAllocationKeys = []string{"AddrPorts", "BindLifetime", "LamportID", "ServerDisco", "SteadyStateLifetime", "VNI"}

// validateAllocation checks the allocation's JSON forms and value ranges.
func validateAllocation(al allocation) error {
	var keys []string
	for k := range al.raw {
		if k == "ClientDisco" {
			if err := validateClientDisco(al.raw[k]); err != nil {
				return err
			}
			continue
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if !slices.Equal(keys, wantAllocationKeys) {
		return fmt.Errorf("members %v, want %v", keys, wantAllocationKeys)
	}
	ep := al.ep
	if ep.ServerDisco.IsZero() {
		return fmt.Errorf("ServerDisco is zero")
	}
	if got, want := string(al.raw["ServerDisco"]), `"`+ep.ServerDisco.String()+`"`; got != want {
		return fmt.Errorf("ServerDisco %s, want canonical lower-case form %s", got, want)
	}
	if ep.LamportID == 0 {
		return fmt.Errorf("LamportID is 0")
	}
	if ep.VNI == 0 || ep.VNI >= 1<<24 {
		return fmt.Errorf("VNI %d out of 1..2^24-1", ep.VNI)
	}
	if len(ep.AddrPorts) == 0 {
		return fmt.Errorf("AddrPorts is empty")
	}
	if got := string(al.raw["BindLifetime"]); got != `"30s"` {
		return fmt.Errorf(`BindLifetime %s, want "30s"`, got)
	}
	if got := string(al.raw["SteadyStateLifetime"]); got != `"5m0s"` {
		return fmt.Errorf(`SteadyStateLifetime %s, want "5m0s"`, got)
	}
	return nil
}

// expectBadRequest posts body and requires a 400 with a one-line plain-text
// reason.
func (c *apiClient) expectBadRequest(what string, body []byte) error {
	status, text, hdr, err := c.post(body)
	if err != nil {
		return fmt.Errorf("%s: %v", what, err)
	}
	if status != http.StatusBadRequest {
		return fmt.Errorf("%s: status %d, want 400 (body %q)", what, status, text)
	}
	if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		return fmt.Errorf("%s: Content-Type %q, want text/plain", what, ct)
	}
	reason := strings.TrimSuffix(text, "\n")
	if strings.TrimSpace(reason) == "" || strings.ContainsAny(reason, "\r\n") {
		return fmt.Errorf("%s: reason %q is not one non-empty line", what, text)
	}
	return nil
}

// healthz requires GET /healthz to answer 200 "ok".
func (c *apiClient) healthz() error {
	resp, err := c.http.Get(c.base + "/healthz")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(b)) != "ok" {
		return fmt.Errorf("GET /healthz: status %d body %q, want 200 \"ok\"", resp.StatusCode, b)
	}
	return nil
}

// validateClientDisco checks a later version's ClientDisco member: two
// different disco keys in sorted order.
func validateClientDisco(raw json.RawMessage) error {
	var keys []key.DiscoPublic
	if err := json.Unmarshal(raw, &keys); err != nil {
		return fmt.Errorf("ClientDisco %s: %v", raw, err)
	}
	if len(keys) != 2 || keys[0].Compare(keys[1]) >= 0 {
		return fmt.Errorf("ClientDisco %s: want two different keys, sorted", raw)
	}
	return nil
}
