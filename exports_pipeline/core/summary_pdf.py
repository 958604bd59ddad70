"""A one-page PDF campaign summary for stakeholders: the headline figures and attempts per day."""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

from reportlab.graphics.charts.barcharts import VerticalBarChart
from reportlab.graphics.shapes import Drawing
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle


def _attempts_per_day_chart(per_day: list[dict]) -> Drawing:
    drawing = Drawing(480, 200)
    chart = VerticalBarChart()
    chart.x, chart.y, chart.width, chart.height = 40, 40, 420, 140
    chart.data = [[bucket["attempts"] for bucket in per_day]]
    chart.categoryAxis.categoryNames = [bucket["day"][5:] if i % 5 == 0 else "" for i, bucket in enumerate(per_day)]
    chart.categoryAxis.labels.fontSize = 7
    chart.valueAxis.valueMin = 0
    chart.bars[0].fillColor = colors.HexColor("#4f46e5")
    drawing.add(chart)
    return drawing


PDF_NAME_CHARS = 200  # a longer name would push the figures off the one page (reportlab fails on it)


def _shown_name(name: str) -> str:
    return name if len(name) <= PDF_NAME_CHARS else name[:PDF_NAME_CHARS] + " […]"


def write_summary_pdf(path: Path, campaign_id: str, campaign_name: str, snapshot: str, rows: int, stats: dict) -> None:
    styles = getSampleStyleSheet()
    contacts, attempts, durations = stats["contacts"], stats["attempts"], stats["call_duration_seconds"]
    figures = [
        ["Contacts", f"{contacts['total']:,}"],
        ["Rows in this export", f"{rows:,}"],
        [
            "Completed / refused / not reached",
            f"{contacts['completed']:,} / {contacts['refused']:,} / {contacts['not_reached']:,}",
        ],
        ["Completion rate", f"{stats['completion_rate']:.2f} %"],
        ["Conversion rate", f"{stats['conversion_rate']:.2f} %"],
        ["Call attempts", f"{attempts['total']:,}"],
        ["Average call duration", "-" if durations["average"] is None else f"{durations['average']:.3f} s"],
        ["Total cost", f"USD {stats['total_cost_usd']}"],
    ]
    table = Table(figures, colWidths=[220, 220])
    table.setStyle(
        TableStyle(
            [("GRID", (0, 0), (-1, -1), 0.25, colors.grey), ("BACKGROUND", (0, 0), (0, -1), colors.HexColor("#f1f5f9"))]
        )
    )
    story = [
        Paragraph("Campaign summary", styles["Title"]),
        Paragraph(escape(_shown_name(campaign_name)), styles["Heading2"]),
        Paragraph(f"Campaign {campaign_id}<br/>Snapshot {snapshot} (UTC)", styles["Normal"]),
        Spacer(1, 12),
        table,
        Spacer(1, 18),
        Paragraph("Call attempts per day (last 30 days, UTC)", styles["Heading3"]),
        _attempts_per_day_chart(stats["attempts_per_day"]),
    ]
    SimpleDocTemplate(str(path), pagesize=A4, title="Campaign summary", invariant=1).build(story)
