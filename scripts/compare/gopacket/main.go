// gopacketflow: reassemble every TCP connection of a pcap file with gopacket's reassembly
// package and print one line per connection direction:
//
//	SRC:PORT>DST:PORT BYTES CRC32
//
// (CRC-32 IEEE of the bytes delivered in order, 8 lowercase hex digits), printed when the
// assembler completes the connection (both sides closed by FIN/RST, or flushed at the end
// of the capture), the first packet's sender's direction first. Packets are decoded with
// a DecodingLayerParser (Ethernet, 802.1Q, IPv4, IPv6, TCP) and read with pcapgo (no cgo);
// no checksums are checked. Bytes skipped over a gap are not counted.
//
// Build (offline, Debian's packages):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o gopacketflow .
//
// Usage: gopacketflow FILE.pcap   (summary on stderr)
package main

import (
	"bufio"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
	"github.com/google/gopacket/reassembly"
)

type dirState struct {
	bytes uint64
	crc   uint32
}

type stream struct {
	net, tcp gopacket.Flow
	dirs     [2]dirState // [0]: first packet's sender to receiver
	syn      bool        // the first packet was a SYN
	done     bool
}

var out *bufio.Writer
var nConns, nLines, nSkipped, nGhosts uint64

func (s *stream) Accept(tcp *layers.TCP, ci gopacket.CaptureInfo, dir reassembly.TCPFlowDirection, nextSeq reassembly.Sequence, start *bool, ac reassembly.AssemblerContext) bool {
	return true
}

func (s *stream) ReassembledSG(sg reassembly.ScatterGather, ac reassembly.AssemblerContext) {
	dir, _, _, skip := sg.Info()
	if skip > 0 {
		nSkipped += uint64(skip)
	}
	n, _ := sg.Lengths()
	if n == 0 {
		return
	}
	data := sg.Fetch(n)
	i := 0
	if dir == reassembly.TCPDirServerToClient {
		i = 1
	}
	d := &s.dirs[i]
	d.bytes += uint64(len(data))
	d.crc = crc32.Update(d.crc, crc32.IEEETable, data)
}

func (s *stream) ReassemblyComplete(ac reassembly.AssemblerContext) bool {
	// A connection the assembler opened for a stray packet after the close (the last ACK
	// of a FIN exchange starts a new one in gopacket) is not a connection: not printed.
	if !s.done && !s.syn && s.dirs[0].bytes == 0 && s.dirs[1].bytes == 0 {
		s.done = true
		nGhosts++
	}
	if !s.done {
		s.done = true
		src, dst := s.net.Endpoints()
		sp, dp := s.tcp.Endpoints()
		fmt.Fprintf(out, "%s:%s>%s:%s %d %08x\n", src, sp, dst, dp, s.dirs[0].bytes, s.dirs[0].crc)
		fmt.Fprintf(out, "%s:%s>%s:%s %d %08x\n", dst, dp, src, sp, s.dirs[1].bytes, s.dirs[1].crc)
		nLines += 2
	}
	return true
}

type factory struct{}

func (factory) New(netFlow, tcpFlow gopacket.Flow, tcp *layers.TCP, ac reassembly.AssemblerContext) reassembly.Stream {
	nConns++
	return &stream{net: netFlow, tcp: tcpFlow, syn: tcp.SYN}
}

type context struct{ ci gopacket.CaptureInfo }

func (c *context) GetCaptureInfo() gopacket.CaptureInfo { return c.ci }

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintf(os.Stderr, "usage: %s FILE.pcap\n", os.Args[0])
		os.Exit(2)
	}
	f, err := os.Open(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(bufio.NewReaderSize(f, 1<<20))
	if err != nil {
		fmt.Fprintln(os.Stderr, "not a pcap file (pcapng is not read here):", err)
		os.Exit(1)
	}
	out = bufio.NewWriterSize(os.Stdout, 1<<16)
	defer out.Flush()

	var eth layers.Ethernet
	var dot1q layers.Dot1Q
	var ip4 layers.IPv4
	var ip6 layers.IPv6
	var tcp layers.TCP
	var first gopacket.LayerType
	switch r.LinkType() {
	case layers.LinkTypeEthernet:
		first = layers.LayerTypeEthernet
	case layers.LinkTypeRaw, layers.LinkType(228):
		first = layers.LayerTypeIPv4
	default:
		fmt.Fprintf(os.Stderr, "link type %v not handled\n", r.LinkType())
		os.Exit(1)
	}
	parser := gopacket.NewDecodingLayerParser(first, &eth, &dot1q, &ip4, &ip6, &tcp)
	parser.IgnoreUnsupported = true
	decoded := make([]gopacket.LayerType, 0, 8)

	pool := reassembly.NewStreamPool(factory{})
	asm := reassembly.NewAssembler(pool)
	ctx := &context{}
	var packets uint64
	var lastFlush time.Time
	for {
		data, ci, err := r.ReadPacketData()
		if err == io.EOF {
			break
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "read:", err)
			break
		}
		packets++
		if err := parser.DecodeLayers(data, &decoded); err != nil {
			// truncated or odd packets: use what was decoded
		}
		var netFlow gopacket.Flow
		haveNet, haveTCP := false, false
		for _, t := range decoded {
			switch t {
			case layers.LayerTypeIPv4:
				netFlow, haveNet = ip4.NetworkFlow(), true
			case layers.LayerTypeIPv6:
				netFlow, haveNet = ip6.NetworkFlow(), true
			case layers.LayerTypeTCP:
				haveTCP = true
			}
		}
		if !haveNet || !haveTCP {
			continue
		}
		ctx.ci = ci
		asm.AssembleWithContext(netFlow, &tcp, ctx)
		// Like the examples: every minute of capture time, flush connections idle for an hour.
		if ci.Timestamp.Sub(lastFlush) > time.Minute {
			if !lastFlush.IsZero() {
				asm.FlushCloseOlderThan(ci.Timestamp.Add(-time.Hour))
			}
			lastFlush = ci.Timestamp
		}
	}
	asm.FlushAll()
	out.Flush()
	fmt.Fprintf(os.Stderr, "gopacketflow: %d packets, %d connections, %d direction lines, %d bytes skipped, %d empty SYN-less connections not printed\n", packets, nConns, nLines, nSkipped, nGhosts)
}
