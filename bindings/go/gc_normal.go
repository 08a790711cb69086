//go:build !tribegc

package tribe

// gcPoint does nothing; with the build tag tribegc it forces a collection.
func gcPoint() {}
