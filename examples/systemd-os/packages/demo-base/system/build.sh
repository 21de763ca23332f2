# What Debian's maintainer scripts would have done, declared instead of run:
# sshd's privilege-separation user (sysusers.d at boot), host keys on the
# first boot, units enabled by preset (systemd applies presets on a first
# boot), DHCP for the NIC, and sshd's configuration (which the package
# installs through ucf in its postinst).
d="$DESTDIR$PREFIX"
install -Dm0644 sshd.sysusers "$d/lib/sysusers.d/sshd.conf"
install -Dm0644 groups.sysusers "$d/lib/sysusers.d/demo-groups.conf"
install -Dm0644 sshd-keygen.service "$d/lib/systemd/system/sshd-keygen.service"
install -Dm0644 demo-marker.service "$d/lib/systemd/system/demo-marker.service"
install -Dm0755 demo-marker "$d/lib/demo/demo-marker"
install -Dm0755 demo-health "$d/lib/demo/demo-health"
install -Dm0644 demo-health.service "$d/lib/systemd/system/demo-health.service"
install -Dm0644 demo.preset "$d/lib/systemd/system-preset/50-demo.preset"
install -Dm0644 dhcp.network "$d/lib/systemd/network/80-dhcp.network"
install -Dm0644 sshd_config "$DESTDIR/etc/ssh/sshd_config"
# What base-files' postinst and the installer would write into /etc: the
# loopback names and where lookups go (nss-myhostname, nss-resolve).
install -Dm0644 hosts "$DESTDIR/etc/hosts"
install -Dm0644 nsswitch.conf "$DESTDIR/etc/nsswitch.conf"
# An image is configured by its build and Ignition, not by a person at
# the console: no interactive first-boot wizard.
mkdir -p "$DESTDIR/etc/systemd/system"
ln -s /dev/null "$DESTDIR/etc/systemd/system/systemd-firstboot.service"
printf 'LANG=C.UTF-8\n' > "$DESTDIR/etc/locale.conf"
# No SELinux policy in this OS; Ignition reads this to know not to relabel.
install -d "$DESTDIR/etc/selinux"
printf 'SELINUX=disabled\nSELINUXTYPE=default\n' > "$DESTDIR/etc/selinux/config"
# PAM's common-* files, which libpam-runtime's postinst makes with
# pam-auth-update: pam_unix only (sshd, login and sudo read them).
for f in pam.d/common-*; do
  install -Dm0644 "$f" "$DESTDIR/etc/$f"
done
