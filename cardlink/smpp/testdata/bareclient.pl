#!/usr/bin/perl
# The baseline of the submit benchmark: a bare Net::SMPP client that binds
# as a transceiver and sends N submit_sm with W outstanding, the same
# message keyport's ESME sends, acknowledging the receipts. It prints
# {"n":N,"seconds":S} on stdout.
#
#   bareclient.pl --port P --n N --window W --hex SHORT_MESSAGE_HEX
use strict;
use warnings;
use Getopt::Long;
use Time::HiRes qw(time);
use Net::SMPP;

my ($port, $n, $window, $hex) = (0, 1000, 10, '027000');
my ($sysid, $pw) = ('keyport', 'secret');
GetOptions('port=i' => \$port, 'n=i' => \$n, 'window=i' => \$window, 'hex=s' => \$hex,
	'system-id=s' => \$sysid, 'password=s' => \$pw) or die "usage\n";

my $c = Net::SMPP->new_transceiver('127.0.0.1', port => $port, system_id => $sysid, password => $pw,
	smpp_version => 0x34) or die "bind: $!";
my $sm = pack('H*', $hex);
my ($sent, $done, $out) = (0, 0, 0);
my $t0 = time;
while ($done < $n) {
	while ($out < $window && $sent < $n) {
		$c->submit_sm(async => 1, destination_addr => '491700000' . ($sent % 1000), dest_addr_ton => 1,
			dest_addr_npi => 1, source_addr => '1234', esm_class => 0x40, protocol_id => 0x7F,
			data_coding => 0xF6, registered_delivery => 1, short_message => $sm);
		$sent++;
		$out++;
	}
	my $pdu = $c->read_pdu() or die "read: connection lost\n";
	if ($pdu->{cmd} == 0x80000004) {
		die "submit_sm_resp status $pdu->{status}\n" if $pdu->{status};
		$done++;
		$out--;
	} elsif ($pdu->{cmd} == 0x00000005) {
		$c->deliver_sm_resp(message_id => '', seq => $pdu->{seq});
	} elsif ($pdu->{cmd} == 0x00000015) {
		$c->enquire_link_resp(seq => $pdu->{seq});
	}
}
my $s = time - $t0;
$c->unbind(async => 1);
printf("{\"n\":%d,\"seconds\":%.6f}\n", $n, $s);
