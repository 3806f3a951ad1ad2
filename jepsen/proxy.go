//go:build unix

package jepsen

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"sync"
	"time"
)

// link is a fault-injecting TCP proxy for one directed pair: a node dialing
// a peer (n1>n2, its Raft traffic) or a client dialing a node (c1>n2). Every
// connection made to its address is forwarded to target, both ways, until
// the link is cut. A cut link is a black hole, as a dropped route is: it
// forwards nothing in either direction on the connections it carries and
// accepts new ones only to swallow them; the sender sees silence and times
// out, not a reset. When the link heals, the connections that lost bytes are
// closed (a stream with a gap cannot go on) and new ones are forwarded again.
//
// Cutting a>b but not b>a is a one-way partition at the level of requests:
// a cannot reach b, while b's requests to a, and a's answers to them, flow.
//
// A held link is a stalled route instead: what a sends reaches b, and what
// b sends back is kept, in order, and delivered when the hold ends. Every
// answer b gave meanwhile arrives late, by up to the hold.
type link struct {
	name   string // "n1>n2", "c1>n3"
	target string
	ln     net.Listener
	wg     sync.WaitGroup

	mu struct {
		sync.Mutex
		cut    bool
		closed bool
		pipes  map[*pipe]struct{}
		// held, while the link holds b's answers, is closed when the
		// hold ends (or the link closes); nil while not held.
		held chan struct{}
	}
}

// pipe is one proxied connection: in from the dialer, out to the target
// (nil if it was accepted while the link was cut).
type pipe struct {
	in, out net.Conn
	lost    bool // dropped bytes; guarded by link.mu
}

// newLink starts a proxy for name on a free loopback port, forwarding to
// target.
func newLink(name, target string) (*link, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("proxy %s: %w", name, err)
	}
	l := &link{name: name, target: target, ln: ln}
	l.mu.pipes = map[*pipe]struct{}{}
	l.wg.Go(l.accept)
	return l, nil
}

func (l *link) addr() string { return l.ln.Addr().String() }

func (l *link) accept() {
	for {
		in, err := l.ln.Accept()
		if err != nil {
			return
		}
		p := &pipe{in: in}
		l.mu.Lock()
		if l.mu.closed {
			l.mu.Unlock()
			in.Close()
			return
		}
		cut := l.mu.cut
		p.lost = cut
		l.mu.pipes[p] = struct{}{}
		l.mu.Unlock()
		l.wg.Go(func() { l.serve(p, cut) })
	}
}

// serve forwards p both ways until either side closes or the link drops it.
func (l *link) serve(p *pipe, cut bool) {
	defer l.forget(p)
	if !cut {
		out, err := net.DialTimeout("tcp", l.target, 2*time.Second)
		if err != nil { // target down (killed): the dialer sees its connection close
			return
		}
		l.mu.Lock()
		p.out = out
		closed := l.mu.closed || p.lost
		l.mu.Unlock()
		if closed {
			return
		}
		l.wg.Go(func() { l.pump(p, out, p.in, true); l.forget(p) })
	}
	l.pump(p, p.in, p.out, false)
}

// pump copies src to dst while the link is up. While it is cut, what it
// reads is dropped and p is marked as having lost bytes, after which it
// forwards nothing more. While it is held, what it reads from the target
// (answers) waits, in order, until the hold ends.
func (l *link) pump(p *pipe, src, dst net.Conn, answers bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			l.mu.Lock()
			held := l.mu.held
			l.mu.Unlock()
			if answers && held != nil {
				<-held // closed by the hold's end or the link's close
			}
			l.mu.Lock()
			if l.mu.cut {
				p.lost = true
			}
			drop := p.lost || dst == nil || l.mu.closed
			l.mu.Unlock()
			if !drop {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			return
		}
	}
}

// forget closes p's connections and drops it from the link.
func (l *link) forget(p *pipe) {
	l.mu.Lock()
	delete(l.mu.pipes, p)
	l.mu.Unlock()
	p.close()
}

func (p *pipe) close() {
	p.in.Close()
	if p.out != nil {
		p.out.Close()
	}
}

// setCut cuts or heals the link. Healing closes every connection that lost
// bytes while it was cut.
func (l *link) setCut(cut bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.mu.cut = cut
	if cut {
		return
	}
	for p := range l.mu.pipes {
		if p.lost {
			p.close() // its pumps return and forget it
		}
	}
}

// setHeld starts holding the target's answers, or with held false delivers
// what it held and stops.
func (l *link) setHeld(held bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case held && l.mu.held == nil && !l.mu.closed:
		l.mu.held = make(chan struct{})
	case !held && l.mu.held != nil:
		close(l.mu.held)
		l.mu.held = nil
	}
}

func (l *link) isHeld() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mu.held != nil
}

func (l *link) isCut() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mu.cut
}

// close stops the proxy and closes every connection it carries.
func (l *link) close() {
	l.mu.Lock()
	l.mu.closed = true
	if l.mu.held != nil {
		close(l.mu.held)
		l.mu.held = nil
	}
	for p := range l.mu.pipes {
		p.close()
	}
	l.mu.Unlock()
	l.ln.Close()
	l.wg.Wait()
}

// network is every link of a run: one per directed pair of nodes, and one
// per client and node. Nodes dial their peers, and clients the nodes, only
// through it; the harness's own status calls go direct.
type network struct {
	links map[string]*link // by name
}

func linkName(from, to string) string { return from + ">" + to }

// add starts the link from>to, forwarding to target.
func (nw *network) add(from, to, target string) (*link, error) {
	if nw.links == nil {
		nw.links = map[string]*link{}
	}
	name := linkName(from, to)
	if _, ok := nw.links[name]; ok {
		return nil, fmt.Errorf("proxy %s: already exists", name)
	}
	l, err := newLink(name, target)
	if err != nil {
		return nil, err
	}
	nw.links[name] = l
	return l, nil
}

// cut cuts (or, with cut false, heals) the links from each of froms to each
// of tos, and returns their names.
func (nw *network) cut(froms, tos []string, cut bool) ([]string, error) {
	return nw.each(froms, tos, func(l *link) { l.setCut(cut) })
}

// hold holds (or, with held false, delivers and stops holding) the answers
// on the links from each of froms to each of tos, and returns their names.
func (nw *network) hold(froms, tos []string, held bool) ([]string, error) {
	return nw.each(froms, tos, func(l *link) { l.setHeld(held) })
}

// each calls fn on the link from each of froms to each other of tos and
// returns their names; a link that does not exist is an error.
func (nw *network) each(froms, tos []string, fn func(*link)) ([]string, error) {
	var names []string
	var errs []error
	for _, f := range froms {
		for _, t := range tos {
			if f == t {
				continue
			}
			l := nw.links[linkName(f, t)]
			if l == nil {
				errs = append(errs, fmt.Errorf("no proxy %s", linkName(f, t)))
				continue
			}
			fn(l)
			names = append(names, l.name)
		}
	}
	return names, errors.Join(errs...)
}

// releaseAll stops every hold, delivering what was held, and returns the
// names of the links that were held.
func (nw *network) releaseAll() []string {
	var released []string
	for _, l := range nw.links {
		if l.isHeld() {
			l.setHeld(false)
			released = append(released, l.name)
		}
	}
	sort.Strings(released)
	return released
}

// healAll heals every link and returns the names of those that were cut.
func (nw *network) healAll() []string {
	var healed []string
	for _, l := range nw.links {
		if l.isCut() {
			l.setCut(false)
			healed = append(healed, l.name)
		}
	}
	sort.Strings(healed)
	return healed
}

func (nw *network) close() {
	var wg sync.WaitGroup
	for _, l := range nw.links {
		wg.Go(l.close)
	}
	wg.Wait()
}
