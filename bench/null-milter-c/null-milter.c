/*
 * null-milter (libmilter): the C baseline for milter-bench.
 * Copyright © 2026 The egress-milter developers
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * Registers the callbacks egress-milter registers (connect, envfrom,
 * envrcpt, header, eoh, eom, abort), negotiates like it (quarantine action,
 * no reply to headers, the same macro lists) and lets every message through.
 *
 * Usage: null-milter-c SOCKET   (libmilter notation: inet:PORT@127.0.0.1 or unix:/path)
 */
#include <libmilter/mfapi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int noreply_header(SMFICTX *ctx) { return smfi_getpriv(ctx) != NULL; }

static sfsistat nm_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1,
                             unsigned long f2, unsigned long f3, unsigned long *pf0,
                             unsigned long *pf1, unsigned long *pf2, unsigned long *pf3) {
    (void)f2; (void)f3;
    *pf0 = f0 & SMFIF_QUARANTINE;
    /* Skip the stages we do not register, as indymilter does by default. */
    *pf1 = f1 & (SMFIP_NOHELO | SMFIP_NODATA | SMFIP_NOBODY | SMFIP_NOUNKNOWN | SMFIP_NR_HDR);
    *pf2 = 0;
    *pf3 = 0;
    smfi_setpriv(ctx, (*pf1 & SMFIP_NR_HDR) ? (void *)1 : NULL);
    smfi_setsymlist(ctx, SMFIM_ENVFROM, "i {auth_authen}");
    smfi_setsymlist(ctx, SMFIM_ENVRCPT, "i");
    smfi_setsymlist(ctx, SMFIM_EOH, "i");
    smfi_setsymlist(ctx, SMFIM_EOM, "i");
    return SMFIS_CONTINUE;
}

static sfsistat nm_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *sa) {
    (void)ctx; (void)host; (void)sa;
    return SMFIS_CONTINUE;
}

static sfsistat nm_envfrom(SMFICTX *ctx, char **argv) {
    (void)argv;
    (void)smfi_getsymval(ctx, "{auth_authen}");
    return SMFIS_CONTINUE;
}

static sfsistat nm_envrcpt(SMFICTX *ctx, char **argv) {
    (void)ctx; (void)argv;
    return SMFIS_CONTINUE;
}

static sfsistat nm_header(SMFICTX *ctx, char *name, char *value) {
    (void)name; (void)value;
    return noreply_header(ctx) ? SMFIS_NOREPLY : SMFIS_CONTINUE;
}

static sfsistat nm_eoh(SMFICTX *ctx) { (void)ctx; return SMFIS_CONTINUE; }
static sfsistat nm_eom(SMFICTX *ctx) { (void)ctx; return SMFIS_CONTINUE; }
static sfsistat nm_abort(SMFICTX *ctx) { (void)ctx; return SMFIS_CONTINUE; }
static sfsistat nm_close(SMFICTX *ctx) { smfi_setpriv(ctx, NULL); return SMFIS_CONTINUE; }

static struct smfiDesc desc = {
    "null-milter-c",
    SMFI_VERSION,
    SMFIF_QUARANTINE,
    nm_connect,
    NULL, /* helo */
    nm_envfrom,
    nm_envrcpt,
    nm_header,
    nm_eoh,
    NULL, /* body */
    nm_eom,
    nm_abort,
    nm_close,
    NULL, /* unknown */
    NULL, /* data */
    nm_negotiate,
};

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s SOCKET (inet:PORT@127.0.0.1 or unix:/path)\n", argv[0]);
        return 2;
    }
    if (strncmp(argv[1], "unix:", 5) == 0)
        unlink(argv[1] + 5);
    if (smfi_setconn(argv[1]) == MI_FAILURE || smfi_setbacklog(1024) == MI_FAILURE ||
        smfi_register(desc) == MI_FAILURE) {
        fprintf(stderr, "null-milter-c: cannot set up the milter\n");
        return 1;
    }
    return smfi_main() == MI_SUCCESS ? 0 : 1;
}
