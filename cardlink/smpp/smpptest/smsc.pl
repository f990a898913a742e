#!/usr/bin/perl
# A test SMSC for cardlink/smpp. Net::SMPP (Debian libnet-smpp-perl) reads
# and decodes every PDU; this script only logs what Net::SMPP decoded, one
# JSON object a line, and answers. It stands in for the operator's SMSC
# and, through --handset, for the handset the messages are delivered to.
#
#   smsc.pl --port N --events FILE --handset FILE [options]
#
# It prints "listening PORT" once it accepts connections. Destinations
# select behaviours:
#   --fail-prefix P    the first --fail-times submits to P… are answered with --fail-status
#   --perm-prefix P    every submit to P… is answered with --perm-status
#   --nack-prefix P    the first submit to P… is answered with generic_nack (ESME_RSYSERR)
#   --undeliv-prefix P accepted, then a delivery receipt with stat:UNDELIV
#   --mo-prefix P      accepted, then a mobile-originated message (a proof of receipt, --por HEX)
#   --unknown-prefix P accepted, then a PDU with an unknown command_id, to be nacked
#   --hold-prefix P    submits to P… are answered only once --hold-count of them wait, or
#                      when nothing more arrives for --hold-idle seconds; each release logs how many waited
#   --mo-spool FILE    the handset side's mobile-originated messages: JSON lines {"from", "ud" hex}
#                      appended after the ESME bound are delivered to it as deliver_sm (PID 7F, DCS F6, UDHI)
#   --receipt-spool FILE
#                      delivery receipts go to another bound ESME, not the one that submitted (as an SMSC
#                      spreading receipts over the binds of one system_id does): the submitting connection
#                      appends them to FILE, every other connection delivers what it finds there
use strict;
use warnings;
use Getopt::Long;
use JSON::PP;
use IO::Handle;
use POSIX qw(strftime);
use Time::HiRes qw(time);
use IO::Select;
use Net::SMPP;

my %o = (
	port         => 0,
	system_id    => 'keyport',
	password     => 'secret',
	fail_prefix  => '999',
	fail_times   => 2,
	fail_status  => 0x58,
	perm_prefix  => '555',
	perm_status  => 0x0B,
	nack_prefix  => '666',
	undeliv_prefix => '888',
	mo_prefix    => '777',
	unknown_prefix => '444',
	por          => '0012B0000101020304000000000000009000',
	hold_prefix  => '333',
	hold_count   => 4,
	hold_idle    => 1.0,
);
GetOptions(
	'port=i' => \$o{port}, 'events=s' => \$o{events}, 'handset=s' => \$o{handset},
	'system-id=s' => \$o{system_id}, 'password=s' => \$o{password},
	'fail-prefix=s' => \$o{fail_prefix}, 'fail-times=i' => \$o{fail_times}, 'fail-status=o' => \$o{fail_status},
	'perm-prefix=s' => \$o{perm_prefix}, 'perm-status=o' => \$o{perm_status},
	'nack-prefix=s' => \$o{nack_prefix}, 'undeliv-prefix=s' => \$o{undeliv_prefix},
	'mo-prefix=s' => \$o{mo_prefix}, 'unknown-prefix=s' => \$o{unknown_prefix}, 'por=s' => \$o{por},
	'hold-prefix=s' => \$o{hold_prefix}, 'hold-count=i' => \$o{hold_count}, 'hold-idle=f' => \$o{hold_idle},
	'mo-spool=s' => \$o{mo_spool}, 'receipt-spool=s' => \$o{receipt_spool},
) or die "usage\n";
die "--events and --handset are required\n" unless $o{events} && $o{handset};

my $json = JSON::PP->new->canonical;
open(my $ev, '>>', $o{events}) or die "events: $!";
open(my $hs, '>>', $o{handset}) or die "handset: $!";
$ev->autoflush(1);
$hs->autoflush(1);

# One line per write(2) on an O_APPEND file: lines of forked children do not interleave.
sub logline {
	my ($fh, %f) = @_;
	$f{pid} = $$;
	$f{time} = sprintf('%.6f', time);
	syswrite($fh, $json->encode(\%f) . "\n");
}

sub prefixed { my ($addr, $p) = @_; return $p ne '' && index($addr, $p) == 0; }

my $smpp = Net::SMPP->new_listen('127.0.0.1', port => $o{port}, smpp_version => 0x34, listen => 16)
	or die "listen: $!";
$| = 1;
print "listening ", $smpp->sockport, "\n";
$SIG{CHLD} = 'IGNORE';

my $c;
while (1) {
	$c = $smpp->accept or next;
	my $pid = fork;
	die "fork: $!" unless defined $pid;
	last if $pid == 0;
	undef $c;
}
undef $smpp;

# Every event is logged before its PDU is written, so a test that saw the
# ESME act on a PDU finds the PDU in the log. A deliver_sm's sequence number
# is taken here, from the counter Net::SMPP would use, for that reason.
sub nextseq { return ++(${*$c}{seq}); }

my ($n, %failed, %nacked, @held) = (0);
my $sel = IO::Select->new($c);
sub release {
	logline($ev, event => 'release', held => scalar @held);
	for my $h (@held) {
		my $id = sprintf('%d-%d', $$, ++$n);
		logline($ev, event => 'submit_sm', destination_addr => $h->{destination_addr}, seq => $h->{seq},
			status => 0, message_id => $id, held => JSON::PP::true);
		$c->submit_sm_resp(message_id => $id, seq => $h->{seq});
	}
	@held = ();
}
# A spool is read from its end at connect: what was written before this
# link is not delivered again. tail(PATH, \$offset, FN) calls FN with each
# complete JSON line appended since the last call.
my ($bound, $spool_off, $rspool_off) = (0, 0, 0);
$spool_off = -s $o{mo_spool} || 0 if $o{mo_spool};
$rspool_off = -s $o{receipt_spool} || 0 if $o{receipt_spool};
sub tail {
	my ($path, $off, $fn) = @_;
	return unless $bound && open(my $fh, '<', $path);
	seek($fh, $$off, 0);
	while (my $l = <$fh>) {
		last unless $l =~ /\n\z/;
		$$off += length $l;
		my $m = eval { $json->decode($l) } or next;
		$fn->($m);
	}
	close $fh;
}
# The handset side's mobile-originated messages (--mo-spool).
sub spool {
	tail($o{mo_spool}, \$spool_off, sub {
		my ($m) = @_;
		my $seq = nextseq();
		logline($ev, event => 'deliver_sm', kind => 'mo', seq => $seq, from => $m->{from}, spooled => JSON::PP::true);
		$c->deliver_sm(async => 1, seq => $seq, source_addr_ton => 1, source_addr_npi => 1, source_addr => $m->{from},
			destination_addr => ($m->{to} || $o{system_id}), esm_class => 0x40, protocol_id => 0x7F,
			data_coding => 0xF6, short_message => pack('H*', $m->{ud}));
	});
}
sub receipt {
	my ($r) = @_;
	my $seq = nextseq();
	logline($ev, event => 'deliver_sm', kind => 'receipt', seq => $seq, message_id => $r->{id}, stat => $r->{stat},
		submitted_by => $r->{pid});
	$c->deliver_sm(async => 1, seq => $seq, source_addr_ton => 1, source_addr_npi => 1, source_addr => $r->{dest},
		dest_addr_ton => $r->{ton}, dest_addr_npi => $r->{npi}, destination_addr => $r->{to}, esm_class => 0x04,
		data_coding => 0, short_message => $r->{text}, receipted_message_id => "$r->{id}\0",
		message_state => pack('C', $r->{state}));
}
# Receipts of other connections' submits (--receipt-spool).
sub rspool {
	tail($o{receipt_spool}, \$rspool_off, sub { my ($r) = @_; receipt($r) if $r->{pid} != $$; });
}
while (1) {
	if ($o{mo_spool} || $o{receipt_spool}) {
		my $waited = 0;
		until ($sel->can_read(0.05)) {
			spool() if $o{mo_spool};
			rspool() if $o{receipt_spool};
			$waited += 0.05;
			release() if @held && $waited >= $o{hold_idle};
		}
	} else {
		release() if @held && !$sel->can_read($o{hold_idle});
	}
	my $pdu = $c->read_pdu() or last;
	my $cmd = $pdu->{cmd};
	if ($cmd == 0x00000009) {    # bind_transceiver
		my $ok = $pdu->{system_id} eq $o{system_id} && $pdu->{password} eq $o{password};
		logline($ev, event => 'bind_transceiver', seq => $pdu->{seq}, system_id => $pdu->{system_id},
			interface_version => $pdu->{interface_version}, ok => $ok ? JSON::PP::true : JSON::PP::false);
		$c->bind_transceiver_resp(system_id => 'perlsmsc', seq => $pdu->{seq}, status => $ok ? 0 : 0x0E);
		exit 0 unless $ok;
		$bound = 1;
	} elsif ($cmd == 0x00000015) {    # enquire_link
		logline($ev, event => 'enquire_link', seq => $pdu->{seq});
		$c->enquire_link_resp(seq => $pdu->{seq});
	} elsif ($cmd == 0x00000004) {    # submit_sm
		my $dest = $pdu->{destination_addr};
		my %f = (event => 'submit_sm', seq => $pdu->{seq},
			service_type => $pdu->{service_type},
			source_addr_ton => $pdu->{source_addr_ton}, source_addr_npi => $pdu->{source_addr_npi},
			source_addr => $pdu->{source_addr},
			dest_addr_ton => $pdu->{dest_addr_ton}, dest_addr_npi => $pdu->{dest_addr_npi},
			destination_addr => $dest,
			esm_class => $pdu->{esm_class}, protocol_id => $pdu->{protocol_id},
			priority_flag => $pdu->{priority_flag}, registered_delivery => $pdu->{registered_delivery},
			data_coding => $pdu->{data_coding},
			sm_length => length($pdu->{short_message}),
			short_message => unpack('H*', $pdu->{short_message}));
		if (prefixed($dest, $o{nack_prefix}) && !$nacked{$dest}++) {
			logline($ev, %f, status => 0x08, answer => 'generic_nack');
			$c->generic_nack(seq => $pdu->{seq}, status => 0x08);
			next;
		}
		if (prefixed($dest, $o{hold_prefix})) {
			push @held, $pdu;
			logline($ev, event => 'held', destination_addr => $dest, seq => $pdu->{seq});
			release() if @held >= $o{hold_count};
			next;
		}
		if (prefixed($dest, $o{perm_prefix})) {
			logline($ev, %f, status => $o{perm_status});
			$c->submit_sm_resp(message_id => '', seq => $pdu->{seq}, status => $o{perm_status});
			next;
		}
		if (prefixed($dest, $o{fail_prefix}) && ($failed{$dest} || 0) < $o{fail_times}) {
			$failed{$dest}++;
			logline($ev, %f, status => $o{fail_status});
			$c->submit_sm_resp(message_id => '', seq => $pdu->{seq}, status => $o{fail_status});
			next;
		}
		my $id = sprintf('%d-%d', $$, ++$n);
		logline($ev, %f, status => 0, message_id => $id);
		# The handset side: the user data as the SMSC would hand it on, with
		# the user data header split out when esm_class has UDHI.
		my $ud = $pdu->{short_message};
		my @ies;
		my $rest = $ud;
		if ($pdu->{esm_class} & 0x40) {
			my $udhl = ord(substr($ud, 0, 1));
			my $h = substr($ud, 1, $udhl);
			$rest = substr($ud, 1 + $udhl);
			while (length $h >= 2) {
				my ($iei, $l) = unpack('CC', $h);
				push @ies, { iei => $iei, data => unpack('H*', substr($h, 2, $l)) };
				$h = substr($h, 2 + $l);
			}
		}
		logline($hs, to => $dest, message_id => $id, protocol_id => $pdu->{protocol_id},
			data_coding => $pdu->{data_coding}, udh => \@ies, data => unpack('H*', $rest));
		$c->submit_sm_resp(message_id => $id, seq => $pdu->{seq});

		if ($pdu->{registered_delivery} & 0x01) {
			my $undeliv = prefixed($dest, $o{undeliv_prefix});
			my $stat = $undeliv ? 'UNDELIV' : 'DELIVRD';
			my $now = strftime('%y%m%d%H%M', gmtime);
			my $text = sprintf('id:%s sub:001 dlvrd:%s submit date:%s done date:%s stat:%s err:%s text:',
				$id, $undeliv ? '000' : '001', $now, $now, $stat, $undeliv ? '001' : '000');
			my %r = (pid => $$, id => $id, dest => $dest, ton => $pdu->{source_addr_ton}, npi => $pdu->{source_addr_npi},
				to => $pdu->{source_addr}, text => $text, stat => $stat, state => $undeliv ? 5 : 2);
			if ($o{receipt_spool}) {
				open(my $rs, '>>', $o{receipt_spool}) or die "receipt spool: $!";
				syswrite($rs, $json->encode(\%r) . "\n");
				close $rs;
				logline($ev, event => 'receipt_spooled', message_id => $id, stat => $stat);
			} else {
				receipt(\%r);
			}
		}
		if (prefixed($dest, $o{mo_prefix})) {
			my $seq = nextseq();
			logline($ev, event => 'deliver_sm', kind => 'mo', seq => $seq, from => $dest);
			$c->deliver_sm(async => 1, seq => $seq, source_addr_ton => 1, source_addr_npi => 1, source_addr => $dest,
				destination_addr => $pdu->{source_addr}, esm_class => 0x40, protocol_id => 0x7F,
				data_coding => 0xF6, short_message => "\x02\x71\x00" . pack('H*', $o{por}));
		}
		if (prefixed($dest, $o{unknown_prefix})) {
			# command_id 0x00000099 is no SMPP v3.4 command.
			logline($ev, event => 'unknown_command', seq => 0x7000 + $n);
			syswrite($c, pack('NNNN', 16, 0x00000099, 0, 0x7000 + $n));
		}
	} elsif ($cmd == 0x80000005) {    # deliver_sm_resp
		logline($ev, event => 'deliver_sm_resp', seq => $pdu->{seq}, status => $pdu->{status});
	} elsif ($cmd == 0x80000015) {    # enquire_link_resp
		logline($ev, event => 'enquire_link_resp', seq => $pdu->{seq});
	} elsif ($cmd == 0x80000000) {    # generic_nack
		logline($ev, event => 'generic_nack', seq => $pdu->{seq}, status => $pdu->{status});
	} elsif ($cmd == 0x00000006) {    # unbind
		logline($ev, event => 'unbind', seq => $pdu->{seq});
		$c->unbind_resp(seq => $pdu->{seq});
		exit 0;
	} else {
		logline($ev, event => 'unexpected', command_id => $cmd, seq => $pdu->{seq});
		$c->generic_nack(seq => $pdu->{seq}, status => 0x03);
	}
}
logline($ev, event => 'closed');
exit 0;
