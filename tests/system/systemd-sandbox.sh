#!/bin/bash
# A real systemd as PID 1 in new pid/mount/cgroup/uts namespaces, for the system tests.
#
#   systemd-sandbox.sh boot DIR   boot one (DIR: an empty directory of ours); prints its host PID
#   systemd-sandbox.sh stop PID   power it off (SIGRTMIN+4; SIGKILL fallback), remove its cgroup
#   drive it with: nsenter -t PID -m -p -u systemctl ...   (nsenter -m resets the cwd to /)
#
# Self-contained on purpose (the project must not depend on anything outside it).
# What makes it safe on a host whose PID 1 is not systemd:
# - DANGER: systemd-tmpfiles-setup.service runs Debian's tmp.conf with --remove --boot and would
#   wipe the host's /tmp. Every unit wanted by sysinit/sockets/timers/paths/local-fs/basic
#   (except journald) and every generator is masked with /dev/null links in the private
#   /run/systemd/system{,-generators}. On top of that, /tmp and /var/tmp are private tmpfs here.
# - container=unshare in PID 1's environment (no bare-metal behaviour: clock, modules, remounts
#   at shutdown); CAP_SYS_MODULE and CAP_SYS_TIME dropped; /proc/sys and /sys read-only (else it
#   raises host sysctls); a private tmpfs /dev with a pty from script(1) as /dev/console and a
#   private /dev/shm; `mount -n` of the first tmpfs on /run (else libmount writes the host's /run).
# - /etc and /var/lib are overlays (host below, DIR/*.upper above): units installed into
#   /etc/systemd/system, users added with useradd, /etc/falcon and StateDirectory=/var/lib/falcon
#   stay in DIR and vanish with it.
# - cgroups here are hybrid (v1 controllers + cgroup2 at /sys/fs/cgroup/unified): the launcher
#   goes into a fresh cgroup2 child before `unshare --cgroup`, and cgroup2 is mounted over
#   /sys/fs/cgroup inside. Tracking, kill, stop and watchdog work; CPUQuota=/MemoryMax= do not.
# - DefaultLimitCORE=0 (a watchdog kill is SIGABRT; core_pattern is "core"), journald volatile.
# - SIGTERM to PID 1 only makes it re-exec: SIGRTMIN+4 powers it off; SIGKILL ends the namespace.
# Not isolated: the network (use free loopback ports) and the rest of the filesystem.
set -euo pipefail; shopt -s nullglob
SELF=$(readlink -f "$0")
CG2=/sys/fs/cgroup; [[ $(stat -fc %T $CG2) == cgroup2fs ]] || CG2=/sys/fs/cgroup/unified
KEEP=" systemd-journald.service systemd-journald.socket systemd-journald-dev-log.socket "

if [[ ${1:-} == --inner ]]; then   # PID 1 of the new pid namespace, in the private mount namespace
  S=$2; C=$(tty)                                           # pty from script(1) -> /dev/console
  mount -n -t tmpfs -o mode=755,nosuid,nodev tmpfs /run    # -n: else libmount mkdirs host /run/mount
  for d in etc:/etc varlib:/var/lib; do
    n=${d%%:*} p=${d#*:}; mkdir -p "$S/$n.upper" "$S/$n.work"
    mount -t overlay overlay -o "lowerdir=$p,upperdir=$S/$n.upper,workdir=$S/$n.work" "$p"
  done
  # SANDBOX_KEEP: host paths under /tmp or /var/tmp (a checkout, its venv) that must stay
  # visible through the private /tmp: parked under the new /run, bound back afterwards.
  keep=(); for k in ${SANDBOX_KEEP//:/ }; do case $k in /tmp/*|/var/tmp/*) keep+=("$k");; esac; done
  for i in "${!keep[@]}"; do mkdir -p /run/keep/$i; mount --bind "${keep[$i]}" /run/keep/$i; done
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /var/tmp
  for i in "${!keep[@]}"; do mkdir -p "${keep[$i]}"; mount --bind /run/keep/$i "${keep[$i]}"; done
  touch /run/console; mount --bind "$C" /run/console
  mount --bind /proc/sys /proc/sys; mount -o remount,bind,ro /proc/sys
  mount -o remount,bind,ro /sys
  mount -t cgroup2 cgroup2 /sys/fs/cgroup                  # pure v2 view, rooted at our cgroup
  mount -t tmpfs -o mode=755,nosuid tmpfs /dev
  for d in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
    IFS=: read -r n a b <<<"$d"; mknod -m 666 /dev/$n c $a $b; done
  mkdir /dev/pts /dev/shm; mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts /dev/pts
  ln -s pts/ptmx /dev/ptmx; ln -s /proc/self/fd /dev/fd
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
  touch /dev/console; mount --move /run/console /dev/console   # must be a tty
  R=/run/systemd; mkdir -p $R/system $R/system-generators $R/system.conf.d $R/journald.conf.d
  for g in /{lib,etc}/systemd/system-generators/*; do ln -sf /dev/null $R/system-generators/${g##*/}; done
  for f in /{lib,etc}/systemd/system/{sysinit,sockets,timers,paths,local-fs,basic}.target.wants/* \
           systemd-remount-fs.service systemd-tmpfiles-clean.service systemd-tmpfiles-setup.service \
           systemd-update-utmp-runlevel.service; do
    u=${f##*/}; [[ $KEEP == *" $u "* ]] || ln -sf /dev/null $R/system/$u; done
  printf '[Manager]\nDefaultLimitCORE=0\nDefaultTimeoutStopSec=10s\n' > $R/system.conf.d/sandbox.conf
  printf '[Journal]\nStorage=volatile\n' > $R/journald.conf.d/sandbox.conf
  for _ in $(seq 100); do mapfile -t a </sys/fs/cgroup/cgroup.procs; [[ ${a[*]} == 1 ]] && break; sleep 0.02; done
  exec env -i container=unshare SYSTEMD_COLORS=0 /usr/bin/setpriv --bounding-set -sys_module,-sys_time \
       /lib/systemd/systemd --system --unit=basic.target
fi

if [[ ${1:-} == stop ]]; then
  P=$2; [[ $(readlink /proc/$P/exe 2>/dev/null) == */systemd/systemd ]] || { echo "$P is not systemd" >&2; exit 1; }
  cg=$(sed -n 's|^0::\(/sysd-[^/]*\).*|\1|p' /proc/$P/cgroup); [[ -n $cg ]] || { echo "$P: not ours" >&2; exit 1; }
  kill -s SIGRTMIN+4 "$P"                  # poweroff (SIGTERM would only make PID 1 re-exec)
  for _ in $(seq 150); do [[ -e /proc/$P ]] || break; sleep 0.1; done
  [[ -e /proc/$P ]] && kill -KILL "$P"     # SIGKILL on the namespace's init kills the namespace
  for _ in $(seq 50); do grep -q 'populated 0' $CG2$cg/cgroup.events && break; sleep 0.1; done
  find $CG2$cg -depth -type d -exec rmdir {} \; ; exit 0
fi

[[ ${1:-} == boot && -d ${2:-} ]] || { echo "usage: $0 boot DIR | stop PID" >&2; exit 2; }
S=$(readlink -f "$2"); CG=$CG2/sysd-${S##*/}; mkdir $CG
ORIG=$(sed -n 's|^0::||p' /proc/self/cgroup); echo $$ > $CG/cgroup.procs   # child inherits: cgroupns root
setsid script -qfc "unshare --pid --fork --mount --cgroup --uts --mount-proc bash $SELF --inner $S" \
  $S/console.log </dev/null >/dev/null 2>&1 &
echo $$ > $CG2$ORIG/cgroup.procs
for _ in $(seq 600); do
  P=; for p in $(cat $(find $CG -name cgroup.procs)); do grep -qP '^NSpid:.*\t1$' /proc/$p/status 2>/dev/null && P=$p; done
  [[ -n $P ]] && for p in $(cat $CG/cgroup.procs); do    # ns PID 1 exists: move the host-side
    grep -qP '^NSpid:\t\d+$' /proc/$p/status 2>/dev/null &&   # wrappers (script, unshare) out
      { echo $p > $CG2$ORIG/cgroup.procs; } 2>/dev/null || true; done
  if [[ -n $P && $(readlink /proc/$P/exe 2>/dev/null) == */systemd/systemd ]]; then
    st=$(nsenter -t $P -m -p -u systemctl is-system-running 2>/dev/null || true)
    if [[ $st == running || $st == degraded ]]; then echo $P > $S/pid; echo $P; exit 0; fi
  fi
  grep -q 'populated 1' $CG/cgroup.events || break; sleep 0.1
done
echo "systemd did not come up; see $S/console.log" >&2; exit 1
