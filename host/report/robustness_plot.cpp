#include "robustness_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "contact_sheet.h"
#include "image_io.h"

namespace nudge {

namespace {

constexpr int kW = 640, kH = 400, kLeft = 56, kRight = 150, kTop = 30, kBottom = 40;

void put(std::vector<unsigned char>& rgb, int x, int y, const unsigned char c[3]) {
  if (x < 0 || y < 0 || x >= kW || y >= kH) return;
  for (int k = 0; k < 3; ++k) rgb[(static_cast<size_t>(y) * kW + x) * 3 + k] = c[k];
}

// Bresenham, two pixels thick.
void line(std::vector<unsigned char>& rgb, int x0, int y0, int x1, int y1, const unsigned char c[3]) {
  const int dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
  int err = dx + dy;
  for (;;) {
    put(rgb, x0, y0, c);
    put(rgb, x0, y0 + 1, c);
    if (x0 == x1 && y0 == y1) break;
    const int e2 = 2 * err;
    if (e2 >= dy) { err += dy; x0 += sx; }
    if (e2 <= dx) { err += dx; y0 += sy; }
  }
}

}  // namespace

void write_accuracy_plot(const std::string& path, const std::string& title, const std::vector<double>& x,
                         const std::vector<PlotCurve>& curves) {
  static const unsigned char kBg[3] = {24, 24, 28}, kAxis[3] = {160, 160, 160}, kGrid[3] = {55, 55, 60},
                             kText[3] = {220, 220, 220};
  static const unsigned char kColors[][3] = {{120, 200, 255}, {255, 160, 70}, {120, 230, 120}, {240, 90, 90},
                                             {200, 140, 255}, {240, 230, 100}};
  std::vector<unsigned char> rgb(static_cast<size_t>(kW) * kH * 3);
  for (size_t i = 0; i < rgb.size(); i += 3) std::copy(kBg, kBg + 3, rgb.begin() + i);
  const int pw = kW - kLeft - kRight, ph = kH - kTop - kBottom;
  const double xmin = x.empty() ? 0 : std::min(0.0, *std::min_element(x.begin(), x.end()));
  const double xmax = x.empty() ? 1 : std::max(*std::max_element(x.begin(), x.end()), xmin + 1e-9);
  auto px = [&](double v) { return kLeft + static_cast<int>(std::lround((v - xmin) / (xmax - xmin) * pw)); };
  auto py = [&](double v) { return kTop + ph - static_cast<int>(std::lround(std::clamp(v, 0.0, 1.0) * ph)); };
  char buf[64];
  for (int g = 0; g <= 10; g += 2) {
    const int y = py(g / 10.0);
    for (int xx = kLeft; xx <= kLeft + pw; ++xx) put(rgb, xx, y, kGrid);
    std::snprintf(buf, sizeof buf, "%3d%%", g * 10);
    draw_text_rgb(rgb, kW, kH, 8, y - 4, buf, kText);
  }
  for (double v : x) {
    const int xx = px(v);
    for (int y = kTop; y <= kTop + ph; ++y) put(rgb, xx, y, kGrid);
    std::snprintf(buf, sizeof buf, "%g", v);
    draw_text_rgb(rgb, kW, kH, xx - 8, kTop + ph + 8, buf, kText);
  }
  line(rgb, kLeft, kTop + ph, kLeft + pw, kTop + ph, kAxis);
  line(rgb, kLeft, kTop, kLeft, kTop + ph, kAxis);
  draw_text_rgb(rgb, kW, kH, kLeft, 10, title, kText);
  draw_text_rgb(rgb, kW, kH, kLeft + pw / 2 - 12, kH - 14, "eps", kText);
  for (size_t c = 0; c < curves.size(); ++c) {
    const unsigned char* col = kColors[c % 6];
    const auto& y = curves[c].y;
    for (size_t i = 0; i < y.size() && i < x.size(); ++i) {
      const int xx = px(x[i]), yy = py(y[i]);
      for (int d = -2; d <= 2; ++d) line(rgb, xx - 2, yy + d, xx + 2, yy + d, col);
      if (i > 0) line(rgb, px(x[i - 1]), py(y[i - 1]), xx, yy, col);
    }
    const int ly = kTop + 10 + static_cast<int>(c) * 16;
    line(rgb, kLeft + pw + 10, ly + 3, kLeft + pw + 26, ly + 3, col);
    draw_text_rgb(rgb, kW, kH, kLeft + pw + 32, ly, curves[c].name, kText);
  }
  write_png_rgb(path, kW, kH, rgb);
}

}  // namespace nudge
