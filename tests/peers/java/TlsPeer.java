// TlsPeer: a Java JSSE server and client for the scenario matrix.
//
//   java TlsPeer server PORT KEYSTORE.p12 TRUSTSTORE.p12 none|want|need 1.2|1.3
//   java TlsPeer client HOST PORT TRUSTSTORE.p12 1.2|1.3 [KEYSTORE.p12]
//
// Key and trust stores are PKCS12 files with the password "changeit". The server
// answers every connection with a short HTTP/1.0 response (want: asks for a
// client certificate and accepts none; need: requires one). The client verifies the
// server certificate (endpoint identification HTTPS, so the IP address must be in
// its subjectAltName), sends an HTTP/1.0 request and prints the answer. Both exit
// non-zero on failure, with the error on stderr.

import java.io.ByteArrayOutputStream;
import java.io.FileInputStream;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.security.KeyStore;
import java.security.cert.X509Certificate;
import javax.net.ssl.KeyManager;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLParameters;
import javax.net.ssl.SSLServerSocket;
import javax.net.ssl.SSLSocket;
import javax.net.ssl.TrustManagerFactory;

public final class TlsPeer {
    private static final char[] PASSWORD = "changeit".toCharArray();

    private static KeyStore load(String path) throws Exception {
        KeyStore ks = KeyStore.getInstance("PKCS12");
        try (InputStream in = new FileInputStream(path)) {
            ks.load(in, PASSWORD);
        }
        return ks;
    }

    private static SSLContext context(String keystore, String truststore) throws Exception {
        KeyManager[] keys = null;
        if (keystore != null) {
            KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
            kmf.init(load(keystore), PASSWORD);
            keys = kmf.getKeyManagers();
        } else {
            // An empty key store: the client has no certificate to offer.
            KeyStore empty = KeyStore.getInstance("PKCS12");
            empty.load(null, PASSWORD);
            KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
            kmf.init(empty, PASSWORD);
            keys = kmf.getKeyManagers();
        }
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(load(truststore));
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(keys, tmf.getTrustManagers(), null);
        return ctx;
    }

    private static String[] protocols(String version) {
        switch (version) {
            case "1.2":
                return new String[] {"TLSv1.2"};
            case "1.3":
                return new String[] {"TLSv1.3"};
            default:
                throw new IllegalArgumentException("unknown version " + version + " (1.2 or 1.3)");
        }
    }

    /** Reads until the blank line that ends an HTTP request head. */
    private static void readHead(InputStream in) throws Exception {
        int state = 0;
        int b;
        while ((b = in.read()) != -1) {
            if (b == '\r') {
                continue;
            }
            if (b == '\n') {
                if (++state == 2) {
                    return;
                }
            } else {
                state = 0;
            }
        }
    }

    private static void server(String[] a) throws Exception {
        int port = Integer.parseInt(a[1]);
        SSLContext ctx = context(a[2], a[3]);
        String auth = a[4];
        try (SSLServerSocket ss = (SSLServerSocket) ctx.getServerSocketFactory().createServerSocket(port)) {
            ss.setEnabledProtocols(protocols(a[5]));
            switch (auth) {
                case "need":
                    ss.setNeedClientAuth(true);
                    break;
                case "want":
                    ss.setWantClientAuth(true);
                    break;
                case "none":
                    break;
                default:
                    throw new IllegalArgumentException("unknown auth " + auth + " (none, want or need)");
            }
            while (true) {
                try (SSLSocket s = (SSLSocket) ss.accept()) {
                    s.startHandshake();
                    readHead(s.getInputStream());
                    String peer = "none";
                    try {
                        peer = ((X509Certificate) s.getSession().getPeerCertificates()[0])
                                .getSubjectX500Principal().getName();
                    } catch (javax.net.ssl.SSLPeerUnverifiedException e) {
                        // no client certificate
                    }
                    String body = "hello from Java JSSE, client certificate: " + peer + "\n";
                    OutputStream out = s.getOutputStream();
                    out.write(("HTTP/1.0 200 OK\r\nContent-Length: " + body.length() + "\r\n\r\n" + body)
                            .getBytes(StandardCharsets.US_ASCII));
                    out.flush();
                } catch (Exception e) {
                    System.err.println("TlsPeer server: " + e);
                }
            }
        }
    }

    private static void client(String[] a) throws Exception {
        String host = a[1];
        int port = Integer.parseInt(a[2]);
        SSLContext ctx = context(a.length > 5 ? a[5] : null, a[3]);
        try (SSLSocket s = (SSLSocket) ctx.getSocketFactory().createSocket(host, port)) {
            s.setEnabledProtocols(protocols(a[4]));
            SSLParameters params = s.getSSLParameters();
            params.setEndpointIdentificationAlgorithm("HTTPS");
            s.setSSLParameters(params);
            s.startHandshake();
            OutputStream out = s.getOutputStream();
            out.write(("GET / HTTP/1.0\r\nHost: " + host + "\r\n\r\n").getBytes(StandardCharsets.US_ASCII));
            out.flush();
            ByteArrayOutputStream answer = new ByteArrayOutputStream();
            s.getInputStream().transferTo(answer);
            System.out.print(answer.toString(StandardCharsets.US_ASCII));
        }
    }

    public static void main(String[] a) {
        try {
            if (a.length >= 6 && a[0].equals("server")) {
                server(a);
            } else if (a.length >= 5 && a[0].equals("client")) {
                client(a);
            } else {
                System.err.println("usage: TlsPeer server PORT KEYSTORE TRUSTSTORE none|want|need 1.2|1.3");
                System.err.println("       TlsPeer client HOST PORT TRUSTSTORE 1.2|1.3 [KEYSTORE]");
                System.exit(2);
            }
        } catch (Exception e) {
            System.err.println("TlsPeer: " + e);
            System.exit(1);
        }
    }
}
