#!/usr/bin/perl
# Drives eppmux with Net::EPP::Simple (Debian libnet-epp-perl), an EPP client the project did not
# write: it builds its own XML, sends <hello> before commands, and logs in with the URIs from the
# greeting. Prints one line per step; exits non-zero at the first failure.
#
# Usage: net_epp_simple.pl HOST PORT tls|plain CA_FILE CLID PASSWORD DOMAIN
use strict;
use warnings;
use Net::EPP::Simple;

my ($host, $port, $mode, $ca, $clid, $pw, $domain) = @ARGV;
die "usage: $0 HOST PORT tls|plain CA_FILE CLID PASSWORD DOMAIN\n" unless defined $domain;

my %tls = $mode eq 'tls' ? (verify => 1, ca_file => $ca) : (no_ssl => 1);
my $epp = Net::EPP::Simple->new(
    host => $host, port => $port, user => $clid, pass => $pw,
    load_config => 0, timeout => 10, reconnect => 0, %tls,
);
defined $epp or die "FAIL login: " . Net::EPP::Simple::code() . " " . Net::EPP::Simple::error() . "\n";
print "OK login ", $Net::EPP::Simple::Code, "\n";

sub step {
    my ($name, $ok) = @_;
    my $code = $Net::EPP::Simple::Code // 'none';
    die "FAIL $name: $code " . ($Net::EPP::Simple::Error // '') . "\n" unless $ok;
    print "OK $name $code\n";
}

step('check-available', ($epp->check_domain($domain) // -1) == 1);
step('create', $epp->create_domain({
    name => $domain, period => 1, registrant => 'jd1234', contacts => {}, authInfo => 'x2Y-secret',
}));
my $info = $epp->domain_info($domain);
step('info', $info && $info->{name} eq $domain);
step('check-taken', ($epp->check_domain($domain) // -1) == 0);
step('delete', $epp->delete_domain($domain));
$epp->logout or die "FAIL logout\n";
print "OK logout\n";
