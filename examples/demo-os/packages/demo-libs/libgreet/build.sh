# Build libgreet with the board's cross compiler and install it into DESTDIR.
$CC $CFLAGS -fPIC -DGREET_VERSION="\"$PV\"" -c greet.c -o greet.o
$CC $LDFLAGS -shared -Wl,-soname,libgreet.so.1 -o libgreet.so.1 greet.o
install -Dm0755 libgreet.so.1 "$DESTDIR$PREFIX/lib/libgreet.so.1"
ln -sf libgreet.so.1 "$DESTDIR$PREFIX/lib/libgreet.so"
install -Dm0644 greet.h "$DESTDIR$PREFIX/include/greet.h"
sed -e "s|@PREFIX@|$PREFIX|" -e "s|@VERSION@|$PV|" greet.pc.in > greet.pc
install -Dm0644 greet.pc "$DESTDIR$PREFIX/lib/pkgconfig/greet.pc"
