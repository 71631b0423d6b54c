package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"strconv"
	"strings"

	"tailscale.com/net/udprelay"
	"tailscale.com/types/key"
)

// maxRequestBody bounds an allocation request; two keys need ~160 bytes.
const maxRequestBody = 64 << 10

// allocateRequest is the body of POST /v0/relay/endpoint.
type allocateRequest struct {
	DiscoKeys []string
}

// newAPI returns the HTTP allocation API in front of srv.
func newAPI(srv *udprelay.Server) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok")
	})
	mux.HandleFunc("POST /v0/relay/endpoint", func(w http.ResponseWriter, r *http.Request) {
		handleAllocate(srv, w, r)
	})
	return mux
}

func handleAllocate(srv *udprelay.Server, w http.ResponseWriter, r *http.Request) {
	a, b, err := parseAllocateRequest(r)
	if err != nil {
		log.Printf("bad request: %v", err)
		http.Error(w, oneLine(err.Error()), http.StatusBadRequest)
		return
	}
	ep, err := srv.AllocateEndpoint(a, b)
	if err != nil {
		status := allocateErrorStatus(err)
		var notReady udprelay.ErrServerNotReady
		if errors.As(err, &notReady) {
			w.Header().Set("Retry-After", strconv.Itoa(max(1, int(notReady.RetryAfter.Seconds()))))
		}
		log.Printf("allocate %s %s: %d %v", a.ShortString(), b.ShortString(), status, err)
		http.Error(w, oneLine(err.Error()), status)
		return
	}
	// endpoint.ServerEndpoint marshals to the API's names and forms
	// (discokey:… text, "ip:port" strings, Go duration strings), and at
	// v1.102.5 also carries ClientDisco: the reference's value is sent as is.
	body, err := json.Marshal(ep)
	if err != nil {
		http.Error(w, oneLine(err.Error()), http.StatusInternalServerError)
		return
	}
	log.Printf("allocate %s %s: VNI %d LamportID %d", a.ShortString(), b.ShortString(), ep.VNI, ep.LamportID)
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(body, '\n'))
}

// parseAllocateRequest decodes the request body into exactly two disco keys.
func parseAllocateRequest(r *http.Request) (a, b key.DiscoPublic, err error) {
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxRequestBody))
	if err != nil {
		return a, b, fmt.Errorf("reading body: %v", err)
	}
	var req allocateRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return a, b, fmt.Errorf("malformed JSON: %v", err)
	}
	if len(req.DiscoKeys) != 2 {
		return a, b, fmt.Errorf("DiscoKeys must hold exactly 2 keys, got %d", len(req.DiscoKeys))
	}
	if err := a.UnmarshalText([]byte(req.DiscoKeys[0])); err != nil {
		return a, b, fmt.Errorf("malformed disco key DiscoKeys[0]: %v", err)
	}
	if err := b.UnmarshalText([]byte(req.DiscoKeys[1])); err != nil {
		return a, b, fmt.Errorf("malformed disco key DiscoKeys[1]: %v", err)
	}
	return a, b, nil
}

// allocateErrorStatus maps an AllocateEndpoint error to an HTTP status. At
// v1.102.5 it returns ErrServerClosed, ErrServerNotReady (no addresses yet)
// and "VNI pool exhausted" (all 503: try again elsewhere or later), and
// "client disco equals server disco: …", the caller's fault (400), which has
// no sentinel value and is recognised by its text.
func allocateErrorStatus(err error) int {
	if strings.HasPrefix(err.Error(), "client disco equals server disco") {
		return http.StatusBadRequest
	}
	return http.StatusServiceUnavailable
}

// oneLine flattens an error message so that an error body stays one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
