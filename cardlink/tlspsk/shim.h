// C side of package tlspsk: thin wrappers over libssl that Go calls through
// cgo. Each wrapper that can fail clears OpenSSL's thread-local error queue,
// makes the call and drains the queue into a kp_status before returning, all
// inside one cgo call and so on one OS thread: goroutines may move between
// threads between calls, but never during one.
#ifndef KEYPORT_TLSPSK_SHIM_H
#define KEYPORT_TLSPSK_SHIM_H

#include <stddef.h>
#include <stdint.h>
#include <openssl/ssl.h>

#define KP_MAX_REASONS 8

// kp_status is the outcome of one libssl call: its return value,
// SSL_get_error's classification, and the error queue (reason codes for
// matching, text for people).
typedef struct {
	int ret;
	int ssl_error;
	int nreasons;
	int reasons[KP_MAX_REASONS];
	char text[1024];
} kp_status;

SSL_CTX *kp_ctx_new(int server, const char *ciphers,
		    const char *ciphersuites, int min_version, int max_version,
		    const char *hint, kp_status *st);
SSL *kp_ssl_new(SSL_CTX *ctx, int server, uintptr_t handle, BIO **rbio,
		BIO **wbio, kp_status *st);
void kp_handshake(SSL *ssl, kp_status *st);
void kp_read(SSL *ssl, void *buf, int n, kp_status *st);
void kp_write(SSL *ssl, const void *buf, int n, kp_status *st);
void kp_shutdown(SSL *ssl, kp_status *st);
int kp_feed(BIO *rbio, const void *buf, int n);
int kp_drain(BIO *wbio, void *buf, int n);
int kp_out_pending(BIO *wbio);
int kp_in_buffered(SSL *ssl, BIO *rbio);
uint64_t kp_options(SSL *ssl);
const char *kp_cipher_name(SSL *ssl);

#endif
