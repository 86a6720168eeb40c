package probe

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// StreamConfig describes a probe stream: numbered datagrams sent at a fixed
// rate to an Echo responder, whose answers are counted.
type StreamConfig struct {
	// NSPath is the sender's namespace ("" = the caller's).
	NSPath string
	// Local is the address to send from; the zero value lets the kernel choose.
	Local netip.AddrPort
	// Target is the Echo responder.
	Target netip.AddrPort
	// Rate is probes per second; 0 means 1000.
	Rate int
	// Size is the UDP payload size, at least 28 bytes; 0 means 64.
	Size int
	// Drain is how long Stop waits at most for the last answers; 0 means
	// 3 s (Stop returns as soon as every probe is answered).
	Drain time.Duration
	// DontFragment sets DF and refuses to send datagrams larger than the
	// path MTU known to the sender (IP_PMTUDISC_DO).
	DontFragment bool
	// Connect connects the sender's socket to Target, so that only
	// answers from Target itself count: an answer from the address behind
	// it (a Service's backend whose reply was not translated back) is
	// dropped by the kernel and shows as lost.
	Connect bool
}

func (c *StreamConfig) defaults() error {
	if !c.Target.IsValid() {
		return errors.New("probe stream: no target")
	}
	if c.Rate <= 0 {
		c.Rate = 1000
	}
	if c.Size == 0 {
		c.Size = 64
	}
	if c.Size < headerLen {
		return fmt.Errorf("probe stream: size %d is below the %d-byte header", c.Size, headerLen)
	}
	if c.Drain <= 0 {
		c.Drain = 3 * time.Second
	}
	return nil
}

// Stats counts a stream's probes. Lost is final only after Stop.
type Stats struct {
	// Sent counts every probe the sender tried to send, including those
	// whose write failed.
	Sent int64
	// Received counts distinct probes answered.
	Received int64
	// Lost is Sent minus Received.
	Lost int64
	// Duplicates counts answers for a probe already answered.
	Duplicates int64
	// Reordered counts answers that arrived after an answer to a later probe.
	Reordered int64
	// SendErrors counts sends that failed (also in Lost). Every send is one
	// non-blocking attempt (MSG_DONTWAIT): a full send buffer, e.g. packets
	// held by an unresolved neighbour, fails the send instead of stalling
	// the stream, and a sender starved of CPU still tries every probe.
	SendErrors int64
	// SocketDrops counts answers the sender's own socket dropped because
	// its receive buffer was full (also in Lost): loss of the tool, not of
	// the network.
	SocketDrops int64
	// LargestGap is the longest time without any answer while sending;
	// LargestGapAt is when it began, from the stream's start.
	LargestGap   time.Duration
	LargestGapAt time.Duration
	// MaxRTT is the longest round trip of an answered probe.
	MaxRTT time.Duration
	// MaxSendLag is how far the sender fell furthest behind its schedule:
	// the tool's own stall (CPU starvation, a stopped process), which
	// delays answers and widens gaps without the network being at fault.
	MaxSendLag time.Duration
	// LastSendError is the last write error, if any.
	LastSendError string
	// LostSent is when the first lost probes (at most maxLostSent) were
	// due to be sent, to find them in the logs of what ran meanwhile.
	LostSent []time.Time
}

const maxLostSent = 5

func (s Stats) String() string {
	out := fmt.Sprintf("sent=%d received=%d lost=%d dup=%d reordered=%d send_errors=%d socket_drops=%d largest_gap=%s(at %s) max_rtt=%s max_send_lag=%s",
		s.Sent, s.Received, s.Lost, s.Duplicates, s.Reordered, s.SendErrors, s.SocketDrops,
		s.LargestGap.Round(10*time.Microsecond), s.LargestGapAt.Round(time.Millisecond), s.MaxRTT.Round(10*time.Microsecond),
		s.MaxSendLag.Round(time.Millisecond))
	if len(s.LostSent) > 0 {
		times := make([]string, len(s.LostSent))
		for i, t := range s.LostSent {
			times[i] = t.UTC().Format("15:04:05.000")
		}
		out += " lost_sent=[" + strings.Join(times, " ") + "]"
	}
	return out
}

// Add sums o into s: counts add up, gaps, round trips and lags keep the
// largest.
func (s *Stats) Add(o Stats) {
	s.Sent += o.Sent
	s.Received += o.Received
	s.Lost += o.Lost
	s.Duplicates += o.Duplicates
	s.Reordered += o.Reordered
	s.SendErrors += o.SendErrors
	s.SocketDrops += o.SocketDrops
	if o.LargestGap > s.LargestGap {
		s.LargestGap, s.LargestGapAt = o.LargestGap, o.LargestGapAt
	}
	s.MaxRTT = max(s.MaxRTT, o.MaxRTT)
	s.MaxSendLag = max(s.MaxSendLag, o.MaxSendLag)
	if o.LastSendError != "" {
		s.LastSendError = o.LastSendError
	}
	s.LostSent = append(s.LostSent, o.LostSent...)
}

// Stream is a running probe stream.
type Stream struct {
	cfg  StreamConfig
	conn *net.UDPConn
	id   uint64

	sent    atomic.Int64
	sendErr atomic.Int64
	sendLag atomic.Int64 // nanoseconds
	drops   atomic.Uint32

	mu         sync.Mutex
	seen       []uint64 // bitset of answered sequence numbers
	received   int64
	dups       int64
	reordered  int64
	maxSeq     int64
	start      time.Time
	lastEvent  time.Time
	largestGap time.Duration
	gapAt      time.Duration
	maxRTT     time.Duration
	lastErr    string
	stopped    time.Time

	stopSend chan struct{}
	sendDone chan struct{}
	recvDone chan struct{}
	stopOnce sync.Once
	final    Stats
}

// StartStream opens the sender's socket in cfg.NSPath and starts sending.
func StartStream(cfg StreamConfig) (*Stream, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	conn, err := ListenUDP(cfg.NSPath, cfg.Local)
	if err != nil {
		return nil, fmt.Errorf("probe stream: opening socket: %w", err)
	}
	if cfg.DontFragment {
		if err := setDontFragment(conn); err != nil {
			conn.Close()
			return nil, err
		}
	}
	if cfg.Connect {
		if err := connect(conn, cfg.Target); err != nil {
			conn.Close()
			return nil, fmt.Errorf("probe stream: connecting to %s: %w", cfg.Target, err)
		}
	}
	s := &Stream{
		cfg:       cfg,
		conn:      conn,
		id:        rand.Uint64(),
		maxSeq:    -1,
		start:     time.Now(),
		lastEvent: time.Now(),
		stopSend:  make(chan struct{}),
		sendDone:  make(chan struct{}),
		recvDone:  make(chan struct{}),
	}
	go s.receive()
	go s.send()
	return s, nil
}

func connect(c *net.UDPConn, to netip.AddrPort) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cerr = unix.Connect(int(fd), &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()})
	}); err != nil {
		return err
	}
	return cerr
}

func setDontFragment(c *net.UDPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO)
	}); err != nil {
		return err
	}
	return serr
}

func (s *Stream) send() {
	defer close(s.sendDone)
	buf := make([]byte, s.cfg.Size)
	rc, err := s.conn.SyscallConn()
	if err != nil {
		s.mu.Lock()
		s.lastErr = err.Error()
		s.mu.Unlock()
		return
	}
	to := &unix.SockaddrInet4{Port: int(s.cfg.Target.Port()), Addr: s.cfg.Target.Addr().As4()}
	start := time.Now()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-s.stopSend:
			return
		case now := <-tick.C:
			due := int64(now.Sub(start).Seconds() * float64(s.cfg.Rate))
			if behind := due - s.sent.Load(); behind > 1 {
				lag := time.Duration(behind) * time.Second / time.Duration(s.cfg.Rate)
				if int64(lag) > s.sendLag.Load() {
					s.sendLag.Store(int64(lag))
				}
			}
			for seq := s.sent.Load(); seq < due; seq++ {
				header{stream: s.id, seq: uint64(seq), sent: time.Now()}.put(buf)
				s.sent.Add(1)
				var err error
				if cerr := rc.Write(func(fd uintptr) bool {
					err = unix.Sendto(int(fd), buf, unix.MSG_DONTWAIT, to)
					return true // one attempt, never wait for writability
				}); cerr != nil {
					err = cerr
				}
				if err != nil {
					s.sendErr.Add(1)
					s.mu.Lock()
					s.lastErr = err.Error()
					s.mu.Unlock()
				}
			}
		}
	}
}

func (s *Stream) receive() {
	defer close(s.recvDone)
	buf := make([]byte, 65536)
	oob := make([]byte, oobSize)
	for {
		n, oobn, _, _, err := s.conn.ReadMsgUDPAddrPort(buf, oob)
		if d, ok := overflow(oob[:oobn]); ok {
			s.drops.Store(d)
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// ICMP errors (port unreachable, frag needed) surface as read
			// errors on an unconnected socket only with IP_RECVERR; anything
			// else is transient.
			if errors.Is(err, syscall.ECONNREFUSED) {
				continue
			}
			continue
		}
		h, ok := parseHeader(buf[:n])
		if !ok || h.stream != s.id {
			continue
		}
		s.record(h, time.Now())
	}
}

func (s *Stream) record(h header, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seq := int64(h.seq)
	word, bit := seq/64, uint64(1)<<(seq%64)
	for int64(len(s.seen)) <= word {
		s.seen = append(s.seen, 0)
	}
	if s.seen[word]&bit != 0 {
		s.dups++
		return
	}
	s.seen[word] |= bit
	s.received++
	if seq < s.maxSeq {
		s.reordered++
	} else {
		s.maxSeq = seq
	}
	if rtt := now.Sub(h.sent); rtt > s.maxRTT {
		s.maxRTT = rtt
	}
	if s.stopped.IsZero() || now.Before(s.stopped) {
		if gap := now.Sub(s.lastEvent); gap > s.largestGap {
			s.largestGap, s.gapAt = gap, s.lastEvent.Sub(s.start)
		}
		s.lastEvent = now
	}
}

// Snapshot returns the counts so far; Lost includes probes still in flight.
func (s *Stream) Snapshot() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.statsLocked()
}

func (s *Stream) statsLocked() Stats {
	sent := s.sent.Load()
	return Stats{
		Sent:          sent,
		Received:      s.received,
		Lost:          sent - s.received,
		Duplicates:    s.dups,
		Reordered:     s.reordered,
		SendErrors:    s.sendErr.Load(),
		SocketDrops:   int64(s.drops.Load()),
		LargestGap:    s.largestGap,
		LargestGapAt:  s.gapAt,
		MaxRTT:        s.maxRTT,
		MaxSendLag:    time.Duration(s.sendLag.Load()),
		LastSendError: s.lastErr,
	}
}

// lostSentLocked is when the first unanswered probes were due.
func (s *Stream) lostSentLocked() []time.Time {
	var out []time.Time
	for seq := int64(0); seq < s.sent.Load() && len(out) < maxLostSent; seq++ {
		if word := seq / 64; word >= int64(len(s.seen)) || s.seen[word]&(uint64(1)<<(seq%64)) == 0 {
			out = append(out, s.start.Add(time.Duration(seq)*time.Second/time.Duration(s.cfg.Rate)))
		}
	}
	return out
}

// Stop stops sending, waits cfg.Drain for the last answers, closes the
// socket and returns the final counts. Later calls return the same counts.
func (s *Stream) Stop() Stats {
	s.stopOnce.Do(func() {
		close(s.stopSend)
		<-s.sendDone
		stoppedAt := time.Now()
		s.mu.Lock()
		s.stopped = stoppedAt
		s.mu.Unlock()
		// Wait for the answers still in flight, but no longer than Drain.
		deadline := time.Now().Add(s.cfg.Drain)
		for time.Now().Before(deadline) {
			st := s.Snapshot()
			if st.Received == st.Sent {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		s.conn.Close()
		<-s.recvDone
		s.mu.Lock()
		// The silence from the last answer to the end of sending counts too.
		if gap := stoppedAt.Sub(s.lastEvent); gap > s.largestGap && s.received < s.sent.Load() {
			s.largestGap, s.gapAt = gap, s.lastEvent.Sub(s.start)
		}
		s.final = s.statsLocked()
		s.final.LostSent = s.lostSentLocked()
		s.mu.Unlock()
	})
	return s.final
}
