package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
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

// allocate requests an endpoint for the pair (a, b) and decodes the answer
// with the reference's own endpoint.ServerEndpoint, which is strict about
// every field's form.
func (c *apiClient) allocate(a, b key.DiscoPublic) (endpoint.ServerEndpoint, error) {
	var ep endpoint.ServerEndpoint
	req, _ := json.Marshal(map[string][]string{"DiscoKeys": {a.String(), b.String()}})
	resp, err := c.http.Post(c.base+"/v0/relay/endpoint", "application/json", bytes.NewReader(req))
	if err != nil {
		return ep, fmt.Errorf("POST /v0/relay/endpoint: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return ep, fmt.Errorf("POST /v0/relay/endpoint: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		return ep, fmt.Errorf("POST /v0/relay/endpoint: status %d: %q", resp.StatusCode, body)
	}
	if err := json.Unmarshal(body, &ep); err != nil {
		return ep, fmt.Errorf("allocation %q does not decode as endpoint.ServerEndpoint: %v", body, err)
	}
	return ep, nil
}
