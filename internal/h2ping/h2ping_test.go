package h2ping

import "testing"

// frame returns an HTTP/2 frame header of typ and flags with a payload of n
// zero bytes.
func frame(typ, flags byte, n int) []byte {
	return append([]byte{byte(n >> 16), byte(n >> 8), byte(n), typ, flags, 0, 0, 0, 0}, make([]byte, n)...)
}

func TestCount(t *testing.T) {
	var b []byte
	b = append(b, clientPreface...)
	b = append(b, frame(0x4, 0, 6)...)             // SETTINGS
	b = append(b, frame(framePing, 0, 8)...)       // counted
	b = append(b, frame(0x0, 0x1, 300)...)         // DATA, END_STREAM: flag 0x1 is not an ack here
	b = append(b, frame(framePing, flagAck, 8)...) // an ack: not counted
	b = append(b, frame(framePing, 0, 8)...)       // counted
	if got := Count(b); got != 2 {
		t.Errorf("Count = %d; want 2", got)
	}
	// A frame cut short is not counted; a stream without the preface (a
	// server's) is read the same.
	cut := append(frame(framePing, 0, 8), frame(framePing, 0, 8)[:12]...)
	if got := Count(cut); got != 1 {
		t.Errorf("Count of a cut stream = %d; want 1", got)
	}
}
