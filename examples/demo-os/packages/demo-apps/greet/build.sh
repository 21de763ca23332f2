# Compile against libgreet from the cross-root, found through the board's
# pkg-config wrapper.
$CC $CFLAGS $($PKG_CONFIG --cflags greet) -o greet main.c $LDFLAGS $($PKG_CONFIG --libs greet)
install -Dm0755 greet "$DESTDIR$PREFIX/bin/greet"
