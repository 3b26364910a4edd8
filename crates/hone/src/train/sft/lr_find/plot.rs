//! `lr_find.png`: the smoothed loss against the learning rate on a log axis, the last five points
//! left out and each suggestion marked, as fastai's `plot_lr_find` draws it. Drawn with
//! plotters; the text uses a font compiled into the binary (DejaVu Sans), so the plot looks the
//! same on a machine without fonts.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::Finding;

static FONT: Once = Once::new();

/// DejaVu Sans (Bitstream Vera license, see assets/DejaVuSans-LICENSE).
const DEJAVU_SANS: &[u8] = include_bytes!("../../../../assets/DejaVuSans.ttf");

/// Writes the plot of `finding` to `path` (PNG).
pub fn write_png(finding: &Finding, path: &Path) -> Result<()> {
    FONT.call_once(|| {
        // The bytes are a valid font compiled in; a failure would show as missing text.
        let _ = register_font("sans-serif", FontStyle::Normal, DEJAVU_SANS);
    });
    let shown = finding
        .lrs
        .len()
        .saturating_sub(5)
        .max(2.min(finding.lrs.len()));
    let points: Vec<(f64, f64)> = finding.lrs[..shown]
        .iter()
        .copied()
        .zip(finding.smoothed_losses[..shown].iter().copied())
        .filter(|(_, l)| l.is_finite())
        .collect();
    if points.len() < 2 {
        return Err(anyhow!("too few points to plot ({})", points.len()));
    }
    let (lo, hi) = (points[0].0, points[points.len() - 1].0);
    let (ymin, ymax) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &(_, l)| {
            (a.min(l), b.max(l))
        });
    let pad = ((ymax - ymin) * 0.05).max(1e-6);
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "hone lr-find: loss against learning rate",
                ("sans-serif", 26),
            )
            .margin(20)
            .x_label_area_size(56)
            .y_label_area_size(72)
            .build_cartesian_2d((lo..hi).log_scale(), (ymin - pad)..(ymax + pad))?;
        chart
            .configure_mesh()
            .x_desc("learning rate (log scale)")
            .y_desc("loss (smoothed)")
            .x_label_formatter(&|x| format!("{x:.0e}"))
            .y_label_formatter(&|y| format!("{y:.2}"))
            .label_style(("sans-serif", 18))
            .draw()?;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                BLUE.stroke_width(3),
            ))?
            .label("smoothed loss")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 24, y)], BLUE.stroke_width(3)));
        let s = &finding.suggestions;
        let marks = [
            ("valley", s.valley, RED),
            ("steep", s.steep, GREEN),
            ("minimum", s.minimum, MAGENTA),
        ];
        for (name, lr, colour) in marks {
            let Some(lr) = lr.filter(|lr| (lo..=hi).contains(lr)) else {
                continue;
            };
            let loss = loss_at(&points, lr);
            chart
                .draw_series(std::iter::once(Circle::new((lr, loss), 8, colour.filled())))?
                .label(format!("{name}: {lr:.2e}"))
                .legend(move |(x, y)| Circle::new((x + 12, y), 6, colour.filled()));
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 18))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("{}: cannot draw the plot: {e}", path.display()))
}

/// The plotted loss at `lr`, interpolated on the log axis.
fn loss_at(points: &[(f64, f64)], lr: f64) -> f64 {
    let k = points
        .partition_point(|&(x, _)| x < lr)
        .clamp(1, points.len() - 1);
    let ((x0, y0), (x1, y1)) = (points[k - 1], points[k]);
    let t = ((lr.ln() - x0.ln()) / (x1.ln() - x0.ln())).clamp(0.0, 1.0);
    y0 + t * (y1 - y0)
}
