package views

import (
	"fmt"
	"sort"

	"github.com/keyport/keyport"
)

// Bar is one bar of a server-rendered SVG bar chart, in viewBox units.
type Bar struct {
	X, Y, W, H float64
	Label      string // the day, for the tooltip (<title>)
	Tick       string // an axis label under some bars
	// TickX and TickAnchor place the label: from the bar's left edge, or
	// for the last bar ending at its right edge, so that it stays inside
	// the chart.
	TickX      float64
	TickAnchor string
}

// chart geometry (viewBox 0 0 chartW chartH).
const (
	chartW, chartH = 600.0, 180.0
	chartPadTop    = 10.0
	chartPadBottom = 24.0
	chartPadLeft   = 30.0
)

// ClaimBars lays out claims per day as bars scaled to the busiest day.
func ClaimBars(days []keyport.DayCount) (bars []Bar, max int64) {
	for _, d := range days {
		if d.Count > max {
			max = d.Count
		}
	}
	if len(days) == 0 {
		return nil, 0
	}
	scale := max
	if scale == 0 {
		scale = 1
	}
	slot := (chartW - chartPadLeft) / float64(len(days))
	plot := chartH - chartPadTop - chartPadBottom
	for i, d := range days {
		h := plot * float64(d.Count) / float64(scale)
		b := Bar{X: chartPadLeft + float64(i)*slot + slot*0.15, W: slot * 0.7, Y: chartH - chartPadBottom - h, H: h,
			Label: d.Day.Format("2006-01-02") + ": " + Plural(d.Count, "claim", "claims")}
		// A tick every week, and on the last day unless one is too close.
		if i%7 == 0 && len(days)-1-i >= 4 || i == len(days)-1 {
			b.Tick = d.Day.Format("01-02")
			b.TickX, b.TickAnchor = b.X, "start"
			if i == len(days)-1 {
				b.TickX, b.TickAnchor = b.X+b.W, "end"
			}
		}
		bars = append(bars, b)
	}
	return bars, max
}

func f1(v float64) string { return fmt.Sprintf("%.1f", v) }

type jobRow struct {
	State string
	N     int64
}

// jobRows orders job counts by state name, so the page is stable.
func jobRows(m map[string]int64) []jobRow {
	rows := make([]jobRow, 0, len(m))
	for s, n := range m {
		rows = append(rows, jobRow{s, n})
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].State < rows[j].State })
	return rows
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
