package probe

import (
	"encoding/binary"
	"time"
)

// A probe datagram starts with a fixed header; the rest is padding up to
// the configured size. The echo responder sends the datagram back as it is.
//
//	0  magic "RMP1"
//	4  stream id (uint64)
//	12 sequence number (uint64)
//	20 send time, Unix nanoseconds (int64)
const (
	magic     = "RMP1"
	headerLen = 28
)

type header struct {
	stream uint64
	seq    uint64
	sent   time.Time
}

func (h header) put(b []byte) {
	copy(b, magic)
	binary.BigEndian.PutUint64(b[4:], h.stream)
	binary.BigEndian.PutUint64(b[12:], h.seq)
	binary.BigEndian.PutUint64(b[20:], uint64(h.sent.UnixNano()))
}

func parseHeader(b []byte) (header, bool) {
	if len(b) < headerLen || string(b[:4]) != magic {
		return header{}, false
	}
	return header{
		stream: binary.BigEndian.Uint64(b[4:]),
		seq:    binary.BigEndian.Uint64(b[12:]),
		sent:   time.Unix(0, int64(binary.BigEndian.Uint64(b[20:]))),
	}, true
}
