#!/usr/bin/env python3
# A minimal smtp-source for the refusal run of bench/run-e2e.sh: smtp-source
# exits at the first refused MAIL or RCPT (and Postfix's msg_fatal sleeps a
# second first), so a throttled sender cannot be played by it. This sends
# COUNT messages, one SMTP session each like smtp-source without -d, and
# carries on after 4xx/5xx replies. Prints "accepted N refused M".
#
# Usage: smtp_send.py HOST PORT COUNT FROM TO SIZE
# SPDX-License-Identifier: GPL-3.0-or-later
import smtplib
import sys

host, port, count, sender, rcpt, size = sys.argv[1:7]
body = ("From: <%s>\r\nTo: <%s>\r\nSubject: bench\r\n\r\n" % (sender, rcpt)) + "x" * (int(size) - 2) + "\r\n"
accepted = refused = 0
for _ in range(int(count)):
    with smtplib.SMTP(host, int(port), local_hostname="bench.example", timeout=60) as smtp:
        try:
            smtp.sendmail(sender, [rcpt], body)
            accepted += 1
        except (smtplib.SMTPSenderRefused, smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError):
            refused += 1
print("accepted %d refused %d" % (accepted, refused))
