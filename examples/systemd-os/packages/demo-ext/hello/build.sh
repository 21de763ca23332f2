# One command for the system extension (see the README: build_sysext).
install -d "$DESTDIR$PREFIX/bin"
printf '#!/bin/sh\necho "hello from a system extension"\n' > "$DESTDIR$PREFIX/bin/systemd-os-hello"
chmod 0755 "$DESTDIR$PREFIX/bin/systemd-os-hello"
