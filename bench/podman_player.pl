#!/usr/bin/perl
# A FAKE podman (a "player"), for bench/bench_fleet.py only: it answers the podman commands
# podwarden's watcher sends to one fake node (`version`, `info`, `ps`, `container inspect`,
# `events`, `logs`, `healthcheck run`) from podman 4.3 output recorded on this machine
# (bench/data/podman43/), templated per node by the bench into --dir:
#
#   version.json info.json ps.json     as recorded, ids and names of this node
#   inspect/NAME.json                  one container's inspect, with @@STARTED_AT@@ @@FINISHED_AT@@
#                                      @@RESTARTS@@ @@PID@@ @@STATUS@@ @@RUNNING@@ filled from state.txt
#   templates.txt                      STATUS<TAB>recorded event line with @@ID@@ @@NAME@@ @@TIME@@ @@ROLE@@
#   logs.txt                           NAME<TAB>recorded log text
#   containers.txt                     NAME ID ROLE HEALTHCHECKED
#
# `events` (followed) also plays the node: like podman's file events logger it appends every
# event to events.log (so a later `--since` backfill finds it), and like conmon it appends
# k8s-file records to logs/NAME.log (the paths inspect gives, which podwarden's real perl
# follower reads). At a realistic rate: a log line per container every --log-every seconds
# (jittered), a health check of each checked container every 30 s, and every --crash-every
# seconds (jittered) a crash of one container: died (137 or 1), restart, init, start.
# Only one process plays at a time (flock); another `events` tails events.log.
# --sleep N: every command first sleeps N seconds (a slow node).
use strict; use warnings;
use Fcntl qw(:flock);
use POSIX qw(strftime);
use Time::HiRes qw(gettimeofday sleep);

my %opt = (dir => '', sleep => 0, crash_every => 90, log_every => 3, seed => 0);
while (@ARGV && $ARGV[0] =~ /^--(dir|sleep|crash-every|log-every|seed)$/) {
  my $k = $1; shift @ARGV; $k =~ tr/-/_/; $opt{$k} = shift @ARGV; }
my $dir = $opt{dir} or die "podman_player: --dir is required\n";
sleep($opt{sleep}) if $opt{sleep} > 0;
$| = 1;
srand($opt{seed} || ($$ ^ time()));
my @args = @ARGV;

sub slurp { my ($p) = @_; open(my $fh, '<', $p) or return undef; local $/; my $t = <$fh>; close $fh; return $t; }
sub ns_now { my ($s, $us) = gettimeofday(); return $s * 1000000000 + $us * 1000 + int(rand(1000)); }
sub days_from_civil { my ($y,$m,$d)=@_; $y -= $m <= 2; my $era = int(($y >= 0 ? $y : $y-399) / 400);
  my $yoe = $y - $era*400; my $doy = int((153*($m + ($m > 2 ? -3 : 9)) + 2)/5) + $d-1;
  my $doe = $yoe*365 + int($yoe/4) - int($yoe/100) + $doy; return $era*146097 + $doe - 719468; }
sub parse_ns { my ($t) = @_; return 0 unless $t =~ /^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?Z$/;
  my $f = defined $7 ? $7 : ''; $f .= '0' x (9 - length $f);
  return (days_from_civil($1,$2,$3)*86400 + $4*3600 + $5*60 + $6) * 1000000000 + $f; }
sub split_ns { my ($ns) = @_; my $s = int($ns / 1000000000); my $f = $ns - $s * 1000000000;
  if ($f < 0) { $s -= 1; $f += 1000000000; } return ($s, $f); }
sub go_time { my ($s, $f) = split_ns($_[0]); my $frac = sprintf("%09d", $f); $frac =~ s/0+$//;
  my $t = strftime("%Y-%m-%dT%H:%M:%S", gmtime($s)); return $frac eq '' ? "${t}Z" : "$t.${frac}Z"; }
sub k8s_time { my ($s, $f) = split_ns($_[0]); return strftime("%Y-%m-%dT%H:%M:%S", gmtime($s)) . sprintf(".%09d+00:00", $f); }

my @containers;  # [name, id, role, checked]
for my $line (split /\n/, slurp("$dir/containers.txt") // '') {
  my @f = split / /, $line; push @containers, \@f if @f == 4; }
my %by_name = map { $_->[0] => $_ } @containers;

sub read_state { my %st;
  for my $line (split /\n/, slurp("$dir/state.txt") // '') {
    my ($name, $started, $finished, $restarts, $running) = split / /, $line;
    $st{$name} = { started => $started, finished => $finished, restarts => $restarts, running => $running // 1 }; }
  return \%st; }
sub write_state { my ($st) = @_; my $tmp = "$dir/state.txt.$$";
  open(my $fh, '>', $tmp) or die; for my $c (@containers) { my $s = $st->{$c->[0]};
    print $fh join(' ', $c->[0], $s->{started}, $s->{finished}, $s->{restarts}, $s->{running}), "\n"; }
  close $fh; rename($tmp, "$dir/state.txt"); }

my $cmd = $args[0] // '';
if ($cmd eq 'version') { print slurp("$dir/version.json"); exit 0; }
if ($cmd eq 'info') { print slurp("$dir/info.json"); exit 0; }
if ($cmd eq 'ps') { print slurp("$dir/ps.json"); exit 0; }
if ($cmd eq 'healthcheck' && ($args[1] // '') eq 'run') {
  my $name = $args[2] // ''; exit 0 if $by_name{$name} && $by_name{$name}[3];
  print STDERR "Error: container $name has no defined healthcheck\n"; exit 125; }
if ($cmd eq 'container' && ($args[1] // '') eq 'inspect') { inspect(@args[2..$#args]); }
if ($cmd eq 'inspect') { inspect(grep { !/^-/ } @args[1..$#args]); }
if ($cmd eq 'events') { events(@args[1..$#args]); }
if ($cmd eq 'logs') { logs(@args[1..$#args]); }
print STDERR "fake podman (player): no such command: @args\n"; exit 125;

sub inspect {
  my @names = @_; my $st = read_state(); my (@out, @missing);
  for my $name (@names) {
    my $text = $by_name{$name} ? slurp("$dir/inspect/$name.json") : undef;
    if (!defined $text) { push @missing, $name; next; }
    my $s = $st->{$name} // { started => 0, finished => 0, restarts => 0, running => 1 };
    my %v = (STARTED_AT => '"' . go_time($s->{started}) . '"',
             FINISHED_AT => $s->{finished} ? '"' . go_time($s->{finished}) . '"' : '"0001-01-01T00:00:00Z"',
             RESTARTS => $s->{restarts}, PID => $s->{running} ? 4000 + length($name) : 0,
             STATUS => $s->{running} ? '"running"' : '"exited"', RUNNING => $s->{running} ? 'true' : 'false');
    $text =~ s/"?\@\@(\w+)\@\@"?/$v{$1}/g; $text =~ s/\s+$//;
    push @out, $text; }
  print "[\n", join(",\n", @out), "\n]\n";
  print STDERR "Error: inspecting object: no such container $_\n" for @missing;
  exit(@missing ? 125 : 0); }

sub logs {
  my @a = @_; my $follow = grep { $_ eq '--follow' || $_ eq '-f' } @a;
  my @names = grep { $by_name{$_} } @a; my $many = @names > 1;
  for my $name (@names) {
    for my $rec (split /\n/, slurp("$dir/logs/$name.log") // '') {
      next unless $rec =~ /^(\S+) (stdout|stderr) [PF] ?(.*)$/;
      my $t = $1; my $text = $3; $t =~ s/\+00:00$/Z/;
      print(($many ? "$name " : ''), "$t $text\n"); } }
  if ($follow) { sleep(3600) while 1; }
  exit 0; }

sub event_line { my ($tpl, $c, $ns, $code) = @_;
  my $line = $tpl; my %v = (ID => $c->[1], NAME => $c->[0], TIME => go_time($ns), ROLE => $c->[2]);
  $line =~ s/\@\@(\w+)\@\@/$v{$1}/g;
  $line =~ s/"ContainerExitCode":\d+/"ContainerExitCode":$code/ if defined $code;
  return $line; }

sub events {
  my @a = @_; my ($since, $stream, %only) = (0, 1);
  for (my $i = 0; $i < @a; $i++) {
    if ($a[$i] eq '--since') { $since = parse_ns($a[++$i]); }
    elsif ($a[$i] eq '--stream=false') { $stream = 0; }
    elsif ($a[$i] eq '--filter' && ($a[$i+1] // '') =~ /^container=(.*)$/) { $only{$1} = 1; $i++; } }
  my $log = "$dir/events.log";
  my $pos = 0;
  my $emit_from = sub {  # events.log lines "NS JSON" after --since, from byte $pos on
    open(my $fh, '<', $log) or return; seek($fh, $pos, 0);
    while (my $line = <$fh>) { last unless $line =~ /\n$/; $pos += length $line;
      my ($ns, $json) = split / /, $line, 2; next unless $ns > $since;
      next if %only && !($json =~ /"Name":"([^"]+)"/ && $only{$1}); print $json; }
    close $fh; };
  $emit_from->();
  exit 0 unless $stream;
  open(my $lock, '>>', "$dir/player.lock") or die;
  if (!flock($lock, LOCK_EX | LOCK_NB)) { while (1) { sleep(0.25); $emit_from->(); } }
  play($log, \$pos, $emit_from); }

sub play {
  my ($log, $pos, $emit_from) = @_;
  my %tpl; for my $line (split /\n/, slurp("$dir/templates.txt") // '') {
    my ($status, $json) = split /\t/, $line, 2; $tpl{$status} = $json; }
  my %texts; for my $line (split /\n/, slurp("$dir/logs.txt") // '') {
    my ($name, $text) = split /\t/, $line, 2; push @{$texts{$name}}, $text; }
  my $st = read_state(); my $now = ns_now(); my $S = 1000000000;
  for my $c (@containers) { $st->{$c->[0]} //= { started => $now - 3600 * $S, finished => 0, restarts => 0, running => 1 }; }
  write_state($st);
  my (%next_log, %next_health, %line_no);
  for my $c (@containers) { $next_log{$c->[0]} = $now + int(rand($opt{log_every} * $S));
    $next_health{$c->[0]} = $now + int(rand(30 * $S)) if $c->[3]; }
  my $next_crash = $now + int($opt{crash_every} * (0.5 + rand()) * $S);
  my @pending;  # [ns, container, status, exit code]
  open(my $events, '>>', $log) or die "cannot append $log: $!";
  $events->autoflush(1);
  my %logfh; for my $c (@containers) { open($logfh{$c->[0]}, '>>', "$dir/logs/$c->[0].log") or die; $logfh{$c->[0]}->autoflush(1); }
  while (1) {
    $now = ns_now();
    for my $c (@containers) { my $name = $c->[0];
      if ($st->{$name}{running} && $now >= $next_log{$name}) {
        my @t = @{$texts{$name} || ["$name is alive"]}; my $text = $t[$line_no{$name}++ % @t];
        print {$logfh{$name}} k8s_time($now), " stdout F $text\n";
        $next_log{$name} = $now + int($opt{log_every} * (0.5 + rand()) * $S); }
      if ($c->[3] && $now >= $next_health{$name}) {
        push @pending, [$now, $c, 'health_status'], [$now + 43000000, $c, 'exec_died'];
        $next_health{$name} = $now + 30 * $S; } }
    if ($now >= $next_crash) {
      my $c = $containers[int(rand(@containers))]; my $code = rand() < 0.5 ? 137 : 1;
      push @pending, [$now, $c, 'died', $code], [$now + 3000000, $c, 'restart'],
                     [$now + 85000000, $c, 'init'], [$now + 100000000, $c, 'start'];
      my $s = $st->{$c->[0]}; $s->{finished} = $now; $s->{started} = $now + 99000000; $s->{restarts}++;
      write_state($st);
      $next_crash = $now + int($opt{crash_every} * (0.5 + rand()) * $S); }
    @pending = sort { $a->[0] <=> $b->[0] } @pending;
    while (@pending && $pending[0][0] <= $now) {
      my ($ns, $c, $status, $code) = @{shift @pending}; next unless $tpl{$status};
      print $events "$ns ", event_line($tpl{$status}, $c, $ns, $code), "\n"; }
    $emit_from->();
    sleep(0.25); } }
