// Command derp-echo runs the DERP server of tailscale.com v1.102.5
// (derpserver, behind its own HTTP upgrade handler) on loopback, with one
// reference DERP client (derphttp) logged in to it that sends every packet it
// receives back to its sender. Tests of our DERP client (relay/tailnet) talk
// to both: the server for the login, the echo node for packets both ways.
//
//	derp-echo
//
// On startup it prints one JSON ready line to stdout,
// {"ready": true, "port": N, "server_public": "<hex>", "echo_public": "<hex>"},
// once the echo node is logged in; all logs go to stderr. SIGINT/SIGTERM stop it.
package main

import (
	"context"
	"encoding/json"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"tailscale.com/derp"
	"tailscale.com/derp/derphttp"
	"tailscale.com/derp/derpserver"
	"tailscale.com/net/netmon"
	"tailscale.com/types/key"
)

type readyLine struct {
	Ready        bool   `json:"ready"`
	Port         int    `json:"port"`
	ServerPublic string `json:"server_public"`
	EchoPublic   string `json:"echo_public"`
}

func main() {
	logger := log.New(os.Stderr, "derp-echo: ", log.LstdFlags)
	server := derpserver.New(key.NewNode(), logger.Printf)
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		logger.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/derp", derpserver.Handler(server))
	go func() { logger.Print(http.Serve(listener, mux)) }()

	port := listener.Addr().(*net.TCPAddr).Port
	echoKey := key.NewNode()
	url := "http://" + listener.Addr().String() + "/derp"
	echo, err := derphttp.NewClient(echoKey, url, logger.Printf, netmon.NewStatic())
	if err != nil {
		logger.Fatal(err)
	}
	if err := echo.Connect(context.Background()); err != nil {
		logger.Fatal(err)
	}
	go func() {
		for {
			message, err := echo.Recv()
			if err != nil {
				logger.Fatalf("echo: %v", err)
			}
			if packet, ok := message.(derp.ReceivedPacket); ok {
				if err := echo.Send(packet.Source, packet.Data); err != nil {
					logger.Printf("echo: send: %v", err)
				}
			}
		}
	}()

	line, _ := json.Marshal(readyLine{
		Ready:        true,
		Port:         port,
		ServerPublic: server.PublicKey().UntypedHexString(),
		EchoPublic:   echoKey.Public().UntypedHexString(),
	})
	os.Stdout.Write(append(line, '\n'))

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	<-signals
	echo.Close()
	server.Close()
}
