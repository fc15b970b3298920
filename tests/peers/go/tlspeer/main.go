// tlspeer: a Go crypto/tls server and client for the scenario matrix.
//
//	tlspeer server -listen :PORT -cert C -key K -ca CA -auth none|request|require -version 1.2|1.3 [-grpc]
//	tlspeer client -connect HOST:PORT -name NAME -ca CA [-cert C -key K] -version 1.2|1.3
//
// The server answers every connection with a short HTTP/1.0 response, or, with
// -grpc, serves HTTP/2 over TLS and echoes every unary gRPC call (the message bytes
// travel as they are, no protobuf), so gRPC clients of other stacks can talk to a
// server whose TLS version and client-certificate policy Go sets. The client sends
// an HTTP/1.0 request and reads the answer. Both exit non-zero on a failed
// handshake, with the error on stderr.
package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "tlspeer: "+format+"\n", args...)
	os.Exit(1)
}

func version(v string) uint16 {
	switch v {
	case "1.2":
		return tls.VersionTLS12
	case "1.3":
		return tls.VersionTLS13
	}
	fail("unknown -version %q (1.2 or 1.3)", v)
	return 0
}

func pool(path string) *x509.CertPool {
	pem, err := os.ReadFile(path)
	if err != nil {
		fail("reading CA %s: %v", path, err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pem) {
		fail("no certificate in %s", path)
	}
	return p
}

func keyPair(cert, key string) []tls.Certificate {
	if cert == "" {
		return nil
	}
	kp, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		fail("loading %s / %s: %v", cert, key, err)
	}
	return []tls.Certificate{kp}
}

func clientAuth(mode string) tls.ClientAuthType {
	switch mode {
	case "none":
		return tls.NoClientCert
	case "request":
		// Asks for a certificate, verifies one if given, accepts none.
		return tls.VerifyClientCertIfGiven
	case "require":
		return tls.RequireAndVerifyClientCert
	}
	fail("unknown -auth %q (none, request or require)", mode)
	return 0
}

// grpcEcho answers a unary gRPC call with the request's message.
func grpcEcho(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil || len(body) < 5 {
		http.Error(w, "bad gRPC request", http.StatusBadRequest)
		return
	}
	n := binary.BigEndian.Uint32(body[1:5])
	msg := body[5:]
	if uint32(len(msg)) < n {
		http.Error(w, "short gRPC message", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/grpc")
	w.Header().Set("Trailer", "Grpc-Status, Grpc-Message")
	w.WriteHeader(http.StatusOK)
	frame := make([]byte, 5, 5+n)
	binary.BigEndian.PutUint32(frame[1:5], n)
	_, _ = w.Write(append(frame, msg[:n]...))
	w.Header().Set("Grpc-Status", "0")
	w.Header().Set("Grpc-Message", "")
}

func serve(conn net.Conn) {
	defer conn.Close()
	tc := conn.(*tls.Conn)
	if err := tc.Handshake(); err != nil {
		fmt.Fprintf(os.Stderr, "tlspeer: handshake with %s: %v\n", conn.RemoteAddr(), err)
		return
	}
	r := bufio.NewReader(conn)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if line == "\r\n" || line == "\n" {
			break
		}
	}
	peer := "none"
	if cs := tc.ConnectionState(); len(cs.PeerCertificates) > 0 {
		peer = cs.PeerCertificates[0].Subject.CommonName
	}
	body := fmt.Sprintf("hello from Go crypto/tls, client certificate: %s\n", peer)
	fmt.Fprintf(conn, "HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}

func server(args []string) {
	fs := flag.NewFlagSet("server", flag.ExitOnError)
	listen := fs.String("listen", "", "address to listen on")
	cert := fs.String("cert", "", "server certificate (PEM)")
	key := fs.String("key", "", "server key (PEM)")
	ca := fs.String("ca", "", "CA for client certificates (PEM)")
	auth := fs.String("auth", "none", "none, request or require")
	ver := fs.String("version", "1.3", "1.2 or 1.3")
	grpc := fs.Bool("grpc", false, "serve gRPC (HTTP/2) instead of HTTP/1.0")
	_ = fs.Parse(args)
	v := version(*ver)
	cfg := &tls.Config{
		Certificates: keyPair(*cert, *key),
		ClientCAs:    pool(*ca),
		ClientAuth:   clientAuth(*auth),
		MinVersion:   v,
		MaxVersion:   v,
	}
	if *grpc {
		cfg.NextProtos = []string{"h2"}
		srv := &http.Server{Addr: *listen, TLSConfig: cfg, Handler: http.HandlerFunc(grpcEcho)}
		if err := srv.ListenAndServeTLS("", ""); err != nil {
			fail("serving gRPC on %s: %v", *listen, err)
		}
		return
	}
	ln, err := tls.Listen("tcp", *listen, cfg)
	if err != nil {
		fail("listening on %s: %v", *listen, err)
	}
	for {
		conn, err := ln.Accept()
		if err != nil {
			fail("accept: %v", err)
		}
		go serve(conn)
	}
}

func client(args []string) {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	connect := fs.String("connect", "", "host:port")
	name := fs.String("name", "", "server name to verify")
	cert := fs.String("cert", "", "client certificate (PEM), none if empty")
	key := fs.String("key", "", "client key (PEM)")
	ca := fs.String("ca", "", "CA of the server certificate (PEM)")
	ver := fs.String("version", "1.3", "1.2 or 1.3")
	_ = fs.Parse(args)
	v := version(*ver)
	conn, err := tls.Dial("tcp", *connect, &tls.Config{
		Certificates: keyPair(*cert, *key),
		RootCAs:      pool(*ca),
		ServerName:   *name,
		MinVersion:   v,
		MaxVersion:   v,
	})
	if err != nil {
		fail("connecting to %s: %v", *connect, err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", *name)
	answer, err := io.ReadAll(conn)
	if err != nil {
		fail("reading from %s: %v", *connect, err)
	}
	os.Stdout.Write(answer)
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: tlspeer server|client [flags]")
	}
	switch os.Args[1] {
	case "server":
		server(os.Args[2:])
	case "client":
		client(os.Args[2:])
	default:
		fail("unknown mode %q (server or client)", os.Args[1])
	}
}
