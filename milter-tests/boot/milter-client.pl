#!/usr/bin/perl
# egress-milter – stop hijacked mail accounts from flooding the internet
# Copyright © 2026 The egress-milter developers
# SPDX-License-Identifier: GPL-3.0-or-later
#
# A minimal MTA side of the milter protocol (version 6), for the package
# boot test (milter-tests/boot/checks.sh). It runs inside a minimal Debian
# root, where perl-base (Essential) is the only scripting language, so it
# uses nothing but perl-base's modules.
#
# Usage:
#   milter-client.pl SOCKET connect
#       Opens the unix socket and closes it again. Prints "connected", or
#       "error: ENAME: text" (ENAME is EACCES, ENOENT, ... ) and exits 2.
#   milter-client.pl SOCKET send LOGIN
#       One message, as Postfix sends it: negotiate, connect, helo, MAIL
#       with {auth_authen}=LOGIN, one RCPT, DATA, headers, body, end of
#       message. Prints "accepted" (exit 0), or "refused at STAGE: REPLY"
#       (exit 3), or "error: ..." (exit 1 or 2).
use strict;
use warnings;
use Errno ();
use IO::Socket::UNIX;
use Socket qw(SOCK_STREAM);

my ($path, $mode, $login) = @ARGV;
die "usage: $0 SOCKET connect | SOCKET send LOGIN\n"
    unless defined $mode && ($mode eq 'connect' || ($mode eq 'send' && defined $login));

# No answer within 20 s is a failure, not a hang of the whole boot test.
$SIG{ALRM} = sub { print "error: timeout: no answer from the milter within 20 s\n"; exit 1 };
alarm 20;

my $sock = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $path);
unless ($sock) {
    my ($name) = grep { $!{$_} } keys %!;
    printf "error: %s: %s\n", $name // 'errno ' . ($! + 0), $!;
    exit 2;
}
if ($mode eq 'connect') {
    print "connected\n";
    close $sock;
    exit 0;
}
binmode $sock;

sub send_packet {
    my ($cmd, $data) = @_;
    $data //= '';
    print {$sock} pack('N', 1 + length $data) . $cmd . $data
        or fail("write: $!");
}

sub read_exact {
    my ($n) = @_;
    my $buf = '';
    while (length $buf < $n) {
        my $got = sysread $sock, $buf, $n - length $buf, length $buf;
        fail(defined $got ? 'the milter closed the connection' : "read: $!") unless $got;
    }
    return $buf;
}

sub read_packet {
    my $len = unpack 'N', read_exact(4);
    fail("bad packet length $len") if $len < 1 || $len > 1 << 20;
    my $packet = read_exact($len);
    return (substr($packet, 0, 1), substr($packet, 1));
}

sub fail {
    print "error: $_[0]\n";
    exit 1;
}

# Negotiation: offer every action and every protocol option, as Postfix
# does, and honour what the milter asks for: stages it does not want are
# not sent (SMFIP_NO*), stages it will not answer are not waited for
# (SMFIP_NR_*).
send_packet('O', pack('NNN', 6, 0x1ff, 0x1fffff));
my ($code, $data) = read_packet();
fail("negotiation answered with '$code'") unless $code eq 'O';
my (undef, undef, $proto) = unpack 'NNN', $data;

my %stage = (    # name => [command, NO* bit, NR_* bit]
    connect => ['C', 0x1,   0x1000],
    helo    => ['H', 0x2,   0x2000],
    mail    => ['M', 0x4,   0x4000],
    rcpt    => ['R', 0x8,   0x8000],
    data    => ['T', 0x200, 0x10000],
    header  => ['L', 0x20,  0x80],
    eoh     => ['N', 0x40,  0x40000],
    body    => ['B', 0x10,  0x80000],
);

# Sends one stage; returns undef to go on, or the refusal to report.
sub stage {
    my ($name, $payload) = @_;
    my ($cmd, $no, $nr) = @{ $stage{$name} };
    return undef if $proto & $no;
    send_packet($cmd, $payload);
    return undef if $proto & $nr;
    return answer($name);
}

# Reads replies up to a final one. Modifications (end of message) and
# progress are skipped; continue goes on; anything else ends the message.
sub answer {
    my ($name) = @_;
    while (1) {
        my ($code, $data) = read_packet();
        next if $code =~ /^[+\-2bhimqelp]$/;
        return undef if $code eq 'c';
        return 'accept' if $code eq 'a';
        $data =~ s/\0+$//;
        return "$name: reply $data" if $code eq 'y';
        return "$name: reject" if $code eq 'r';
        return "$name: tempfail" if $code eq 't';
        return "$name: discard" if $code eq 'd';
        return undef if $code eq 's';
        fail("unexpected answer '$code' at $name");
    }
}

sub macros {
    my ($for, %pairs) = @_;
    send_packet('D', $for . join '', map { "$_\0$pairs{$_}\0" } sort keys %pairs);
}

my $from = "<$login>";
my $queue_id = sprintf 'B%X', $$;
my @steps = (
    sub { stage(connect => "client.example\0" . '4' . pack('n', 40000) . "192.0.2.10\0") },
    sub { stage(helo => "client.example\0") },
    sub { macros('M', i => $queue_id, '{auth_authen}' => $login); stage(mail => "$from\0") },
    sub { macros('R', i => $queue_id); stage(rcpt => "<someone\@example.net>\0") },
    sub { stage(data => '') },
    sub { stage(header => "From\0$from\0") },
    sub { stage(header => "Subject\0boot test\0") },
    sub { stage(eoh => '') },
    sub { stage(body => "Hello from the package boot test.\r\n") },
    sub { macros('E', i => $queue_id); send_packet('E'); answer('eom') },
);
for my $step (@steps) {
    my $outcome = $step->();
    next unless defined $outcome;
    last if $outcome eq 'accept';
    send_packet('Q');
    print "refused at $outcome\n";
    exit 3;
}
send_packet('Q');
print "accepted\n";
exit 0;
