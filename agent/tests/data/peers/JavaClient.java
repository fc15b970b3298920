// A TLS 1.3 client on Java's own stack (JSSE), for make-stacks.sh: connects, sends
// one HTTP request, reads the answer. Arguments: host port [client.p12].
// Trusts any server certificate: the capture is about the client's flight sizes.
import java.io.*;
import java.security.*;
import java.security.cert.X509Certificate;
import javax.net.ssl.*;

public class JavaClient {
    public static void main(String[] a) throws Exception {
        KeyManager[] km = null;
        if (a.length > 2) {
            KeyStore ks = KeyStore.getInstance("PKCS12");
            try (InputStream in = new FileInputStream(a[2])) { ks.load(in, "test".toCharArray()); }
            KeyManagerFactory kmf = KeyManagerFactory.getInstance("PKIX");
            kmf.init(ks, "test".toCharArray());
            km = kmf.getKeyManagers();
        }
        TrustManager[] tm = { new X509TrustManager() {
            public void checkClientTrusted(X509Certificate[] c, String t) {}
            public void checkServerTrusted(X509Certificate[] c, String t) {}
            public X509Certificate[] getAcceptedIssuers() { return new X509Certificate[0]; }
        } };
        SSLContext ctx = SSLContext.getInstance("TLSv1.3");
        ctx.init(km, tm, null);
        try (SSLSocket s = (SSLSocket) ctx.getSocketFactory().createSocket(a[0], Integer.parseInt(a[1]))) {
            s.setEnabledProtocols(new String[] {"TLSv1.3"});
            s.startHandshake();
            OutputStream out = s.getOutputStream();
            out.write("GET / HTTP/1.0\r\n\r\n".getBytes());
            out.flush();
            InputStream in = s.getInputStream();
            byte[] buf = new byte[4096];
            while (in.read(buf) > 0) {}
        }
    }
}
