#include <string.h>
#include <openssl/err.h>

#include "shim.h"
#include "_cgo_export.h"

// Index 0 of the SSL ex_data ("app data") carries the cgo.Handle of the
// connection's Go-side PSK state: a number, never a Go pointer.
static uintptr_t kp_handle(SSL *ssl)
{
	return (uintptr_t)SSL_get_app_data(ssl);
}

// RFC 4279 §2: the server looks the identity from the ClientKeyExchange up
// and returns the PSK. The Go side never returns 0 (which makes OpenSSL
// abort with unknown_psk_identity): a refused identity gets a dummy key.
static unsigned int kp_psk_server_cb(SSL *ssl, const char *identity,
				     unsigned char *psk, unsigned int max_psk_len)
{
	unsigned int n;

	// The Go lookup may itself use libcrypto (an HSM module, say) on this
	// thread: its errors must not be mistaken for the handshake's.
	ERR_set_mark();
	n = keyportServerPSK(kp_handle(ssl), (char *)identity, psk,
			     max_psk_len);
	ERR_pop_to_mark();
	return n;
}

// RFC 4279 §2: the client names its identity and supplies the PSK. The
// server's identity hint is ignored: an SCP81 client knows its identity
// (GP Amd B, session parameter tag 85).
static unsigned int kp_psk_client_cb(SSL *ssl, const char *hint,
				     char *identity,
				     unsigned int max_identity_len,
				     unsigned char *psk,
				     unsigned int max_psk_len)
{
	(void)hint;
	return keyportClientPSK(kp_handle(ssl), identity, max_identity_len,
				psk, max_psk_len);
}

// TLS 1.3 external PSKs (RFC 8446 2.2, 4.2.11) travel in an SSL_SESSION
// holding the key as its master secret, bound to a SHA-256 suite: every
// suite this package offers for TLS 1.3 hashes with SHA-256, so the PSK is
// usable with any of them.
static const unsigned char kp_tls13_aes128gcm[] = { 0x13, 0x01 };

static SSL_SESSION *kp_psk_session(SSL *ssl, const unsigned char *psk,
				   size_t n)
{
	const SSL_CIPHER *cipher = SSL_CIPHER_find(ssl, kp_tls13_aes128gcm);
	SSL_SESSION *s;

	if (cipher == NULL || (s = SSL_SESSION_new()) == NULL)
		return NULL;
	if (!SSL_SESSION_set1_master_key(s, psk, n) ||
	    !SSL_SESSION_set_cipher(s, cipher) ||
	    !SSL_SESSION_set_protocol_version(s, TLS1_3_VERSION)) {
		SSL_SESSION_free(s);
		return NULL;
	}
	return s;
}

// TLS 1.3 server: the identity from the ClientHello's pre_shared_key
// extension is looked up as in TLS 1.2 (a refused identity gets the dummy
// key, so its binder fails exactly like a wrong PSK's). An identity that
// cannot be a C string aborts the handshake. OpenSSL owns the returned
// session.
static int kp_psk_find_session_cb(SSL *ssl, const unsigned char *identity,
				  size_t identity_len, SSL_SESSION **sess)
{
	char id[PSK_MAX_IDENTITY_LEN + 1];
	unsigned char psk[PSK_MAX_PSK_LEN];
	unsigned int n;

	*sess = NULL;
	if (identity_len == 0 || identity_len > PSK_MAX_IDENTITY_LEN ||
	    memchr(identity, 0, identity_len) != NULL)
		return 0;
	memcpy(id, identity, identity_len);
	id[identity_len] = '\0';
	ERR_set_mark();
	n = keyportServerPSK(kp_handle(ssl), id, psk, sizeof(psk));
	ERR_pop_to_mark();
	if (n > 0)
		*sess = kp_psk_session(ssl, psk, n);
	OPENSSL_cleanse(psk, sizeof(psk));
	return *sess != NULL;
}

// TLS 1.3 client: offer the configured identity and key. md is set on the
// second call after a HelloRetryRequest; only a SHA-256 suite can use the
// PSK. The identity stays valid until the SSL is freed (Go keeps it).
static int kp_psk_use_session_cb(SSL *ssl, const EVP_MD *md,
				 const unsigned char **id, size_t *idlen,
				 SSL_SESSION **sess)
{
	char ident[PSK_MAX_IDENTITY_LEN + 1];
	unsigned char psk[PSK_MAX_PSK_LEN];
	unsigned int n;
	size_t len = 0;
	const char *stable;

	*sess = NULL;
	*id = NULL;
	*idlen = 0;
	if (md != NULL && EVP_MD_get_type(md) != NID_sha256)
		return 1; // no PSK for this suite
	n = keyportClientPSK(kp_handle(ssl), ident, PSK_MAX_IDENTITY_LEN, psk,
			     sizeof(psk));
	if (n > 0)
		*sess = kp_psk_session(ssl, psk, n);
	OPENSSL_cleanse(psk, sizeof(psk));
	if (*sess == NULL)
		return 0;
	stable = keyportClientIdentity(kp_handle(ssl), &len);
	*id = (const unsigned char *)stable;
	*idlen = len;
	return 1;
}

static void kp_collect(kp_status *st)
{
	size_t used = 0;
	unsigned long code;
	const char *data;
	int flags;

	st->nreasons = 0;
	st->text[0] = '\0';
	while ((code = ERR_get_error_all(NULL, NULL, NULL, &data, &flags)) != 0) {
		char line[256];
		size_t n;

		if (st->nreasons < KP_MAX_REASONS)
			st->reasons[st->nreasons++] = ERR_GET_REASON(code);
		ERR_error_string_n(code, line, sizeof(line));
		n = strlen(line);
		if ((flags & ERR_TXT_STRING) && data != NULL && *data != '\0') {
			snprintf(line + n, sizeof(line) - n, " (%s)", data);
			n = strlen(line);
		}
		if (used + n + 3 >= sizeof(st->text))
			continue; // keep draining the queue; the text is full
		if (used > 0) {
			memcpy(st->text + used, "; ", 2);
			used += 2;
		}
		memcpy(st->text + used, line, n);
		used += n;
		st->text[used] = '\0';
	}
}

static void kp_finish(SSL *ssl, int ret, kp_status *st)
{
	st->ret = ret;
	st->ssl_error = ret > 0 ? SSL_ERROR_NONE : SSL_get_error(ssl, ret);
	kp_collect(st);
}

SSL_CTX *kp_ctx_new(int server, const char *ciphers,
		    const char *ciphersuites, int min_version, int max_version,
		    const char *hint, kp_status *st)
{
	SSL_CTX *ctx;
	uint64_t opts;

	ERR_clear_error();
	st->ret = 0;
	st->ssl_error = SSL_ERROR_SSL;
	ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
	if (ctx == NULL)
		goto fail;

	// GP Amd B cards seen live (PROTOCOLS.md §3.5) abort on a
	// NewSessionTicket and on an echoed encrypt_then_mac (RFC 7366).
	// Compression and renegotiation are never wanted. Empty fragments
	// (the TLS 1.0 CBC countermeasure) are off so that one SSL_write of at
	// most 16 KiB is exactly one record: some cards need each HTTP
	// response in a single record.
	opts = SSL_OP_NO_TICKET | SSL_OP_NO_ENCRYPT_THEN_MAC |
	       SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
	       SSL_OP_DONT_INSERT_EMPTY_FRAGMENTS;
	if (server)
		opts |= SSL_OP_CIPHER_SERVER_PREFERENCE;
	SSL_CTX_set_options(ctx, opts);
	SSL_CTX_clear_options(ctx, SSL_OP_ALLOW_CLIENT_RENEGOTIATION |
					   SSL_OP_ALLOW_UNSAFE_LEGACY_RENEGOTIATION);
	// Every admin session is a full PSK handshake: no session cache, so
	// no resumption state outlives a connection.
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	// Idle sessions (a card waiting on BIP) hold no record buffers.
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);

	if (!SSL_CTX_set_min_proto_version(ctx, min_version) ||
	    !SSL_CTX_set_max_proto_version(ctx, max_version))
		goto fail;
	if (!SSL_CTX_set_cipher_list(ctx, ciphers))
		goto fail;
	if (max_version >= TLS1_3_VERSION) {
		if (!SSL_CTX_set_ciphersuites(ctx, ciphersuites))
			goto fail;
		// TLS 1.3 sends NewSessionTickets unless told not to, even with
		// SSL_OP_NO_TICKET (then stateful ones): none at all.
		if (!SSL_CTX_set_num_tickets(ctx, 0))
			goto fail;
		if (server) {
			// Cards may offer psk_ke only (no (EC)DHE share).
			SSL_CTX_set_options(ctx, SSL_OP_ALLOW_NO_DHE_KEX);
			SSL_CTX_set_psk_find_session_callback(ctx,
							      kp_psk_find_session_cb);
		} else {
			SSL_CTX_set_psk_use_session_callback(ctx,
							     kp_psk_use_session_cb);
		}
	}
	if (server) {
		if (hint != NULL && *hint != '\0' &&
		    !SSL_CTX_use_psk_identity_hint(ctx, hint))
			goto fail;
		SSL_CTX_set_psk_server_callback(ctx, kp_psk_server_cb);
	} else {
		SSL_CTX_set_psk_client_callback(ctx, kp_psk_client_cb);
	}
	kp_collect(st);
	st->ret = 1;
	st->ssl_error = SSL_ERROR_NONE;
	return ctx;

fail:
	kp_collect(st);
	SSL_CTX_free(ctx);
	return NULL;
}

SSL *kp_ssl_new(SSL_CTX *ctx, int server, uintptr_t handle, BIO **rbio,
		BIO **wbio, kp_status *st)
{
	SSL *ssl = NULL;
	BIO *in = NULL, *out = NULL;

	ERR_clear_error();
	st->ret = 0;
	st->ssl_error = SSL_ERROR_SSL;
	ssl = SSL_new(ctx);
	in = BIO_new(BIO_s_mem());
	out = BIO_new(BIO_s_mem());
	if (ssl == NULL || in == NULL || out == NULL)
		goto fail;
	// An empty input BIO means "no bytes yet" (retry), not EOF: Go owns
	// the socket and tells EOF apart itself.
	BIO_set_mem_eof_return(in, -1);
	if (!SSL_set_app_data(ssl, (void *)handle))
		goto fail;
	SSL_set_bio(ssl, in, out); // ssl owns both BIOs from here on
	if (server)
		SSL_set_accept_state(ssl);
	else
		SSL_set_connect_state(ssl);
	*rbio = in;
	*wbio = out;
	kp_collect(st);
	st->ret = 1;
	st->ssl_error = SSL_ERROR_NONE;
	return ssl;

fail:
	kp_collect(st);
	BIO_free(in);
	BIO_free(out);
	SSL_free(ssl);
	return NULL;
}

void kp_handshake(SSL *ssl, kp_status *st)
{
	ERR_clear_error();
	kp_finish(ssl, SSL_do_handshake(ssl), st);
}

void kp_read(SSL *ssl, void *buf, int n, kp_status *st)
{
	ERR_clear_error();
	kp_finish(ssl, SSL_read(ssl, buf, n), st);
}

void kp_write(SSL *ssl, const void *buf, int n, kp_status *st)
{
	ERR_clear_error();
	kp_finish(ssl, SSL_write(ssl, buf, n), st);
}

void kp_shutdown(SSL *ssl, kp_status *st)
{
	int ret;

	ERR_clear_error();
	ret = SSL_shutdown(ssl);
	// 0 means "close_notify sent, the peer's not seen yet": success for us,
	// since Close does not wait for the peer (RFC 5246 §7.2.1 allows it).
	kp_finish(ssl, ret == 0 ? 1 : ret, st);
}

int kp_feed(BIO *rbio, const void *buf, int n)
{
	return BIO_write(rbio, buf, n);
}

int kp_drain(BIO *wbio, void *buf, int n)
{
	return BIO_read(wbio, buf, n);
}

int kp_out_pending(BIO *wbio)
{
	return (int)BIO_ctrl_pending(wbio);
}

int kp_in_buffered(SSL *ssl, BIO *rbio)
{
	return SSL_has_pending(ssl) || BIO_ctrl_pending(rbio) > 0;
}

uint64_t kp_options(SSL *ssl)
{
	return SSL_get_options(ssl);
}

const char *kp_cipher_name(SSL *ssl)
{
	return SSL_CIPHER_get_name(SSL_get_current_cipher(ssl));
}
