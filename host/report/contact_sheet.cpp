#include "contact_sheet.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "errors.h"
#include "image_io.h"

namespace nudge {

namespace {

// ---- 5x7 font -----------------------------------------------------------------------------------------------------
// Each glyph is 7 rows of 5 pixels ('#' set), plus an 8th row for the descenders of g j p q y. Capitals and digits
// use rows 0-6, lowercase letters rows 2-6. A character advances 6 px; a line is 9 px (8 rows + 1 of spacing).
constexpr int kGlyphW = 5, kGlyphRows = 8, kAdvance = 6, kLineHeight = 9;

struct Glyph {
  char c;
  const char* bits;  // 35 chars (7 rows), or 40 with the descender row
};

constexpr Glyph kFont[] = {
    {' ', "..................................."},
    {'!', "..#....#....#....#....#.........#.."},
    {'"', ".#.#..#.#..#.#....................."},
    {'#', ".#.#..#.#.#####.#.#.#####.#.#..#.#."},
    {'%', "##...##..#...#...#...#...#..##...##"},
    {'\'', "..#....#...#......................."},
    {'(', "...#...#...#....#....#.....#.....#."},
    {')', ".#.....#.....#....#....#...#...#..."},
    {'*', ".......#..#.#.#.###.#.#.#..#......."},
    {'+', ".......#....#..#####..#....#......."},
    {',', ".....................##....#...#..."},
    {'-', "...............#####..............."},
    {'.', "..........................##...##.."},
    {'/', ".........#...#...#...#...#........."},
    {'0', ".###.#...##..###.#.###..##...#.###."},
    {'1', "..#...##....#....#....#....#...###."},
    {'2', ".###.#...#....#...#...#...#...#####"},
    {'3', "#####...#...#.....#.....##...#.###."},
    {'4', "...#...##..#.#.#..#.#####...#....#."},
    {'5', "#####.....####.....#....##...#.###."},
    {'6', "..##..#...#....####.#...##...#.###."},
    {'7', "#####....#...#...#...#....#....#..."},
    {'8', ".###.#...##...#.###.#...##...#.###."},
    {'9', ".###.#...##...#.####....#...#..##.."},
    {':', "......##...##........##...##......."},
    {';', "......##...##........##....#...#..."},
    {'<', "...#...#...#...#.....#.....#.....#."},
    {'=', "..........#####.....#####.........."},
    {'>', ".#.....#.....#.....#...#...#...#..."},
    {'?', ".###.#...#....#...#...#.........#.."},
    {'A', ".###.#...##...#######...##...##...#"},
    {'B', "####.#...##...#####.#...##...#####."},
    {'C', ".###.#...##....#....#....#...#.###."},
    {'D', "###..#..#.#...##...##...##..#.###.."},
    {'E', "######....#....####.#....#....#####"},
    {'F', "######....#....####.#....#....#...."},
    {'G', ".###.#...##....#.####...##...#.####"},
    {'H', "#...##...##...#######...##...##...#"},
    {'I', ".###...#....#....#....#....#...###."},
    {'J', "..###...#....#....#....#.#..#..##.."},
    {'K', "#...##..#.#.#..##...#.#..#..#.#...#"},
    {'L', "#....#....#....#....#....#....#####"},
    {'M', "#...###.###.#.##.#.##...##...##...#"},
    {'N', "#...##...###..##.#.##..###...##...#"},
    {'O', ".###.#...##...##...##...##...#.###."},
    {'P', "####.#...##...#####.#....#....#...."},
    {'Q', ".###.#...##...##...##.#.##..#..##.#"},
    {'R', "####.#...##...#####.#.#..#..#.#...#"},
    {'S', ".#####....#.....###.....#....#####."},
    {'T', "#####..#....#....#....#....#....#.."},
    {'U', "#...##...##...##...##...##...#.###."},
    {'V', "#...##...##...##...##...#.#.#...#.."},
    {'W', "#...##...##...##.#.##.#.##.#.#.#.#."},
    {'X', "#...##...#.#.#...#...#.#.#...##...#"},
    {'Y', "#...##...#.#.#...#....#....#....#.."},
    {'Z', "#####....#...#...#...#...#....#####"},
    {'[', ".###..#....#....#....#....#....###."},
    {']', ".###....#....#....#....#....#..###."},
    {'_', "..............................#####"},
    {'a', "...........###.....#.#####...#.####"},
    {'b', "#....#....#.##.##..##...##...#####."},
    {'c', "...........###.#....#....#...#.###."},
    {'d', "....#....#.##.##..###...##...#.####"},
    {'e', "...........###.#...#######.....###."},
    {'f', "..##..#..#.#...###...#....#....#..."},
    {'g', "...........#####...##...#.####....#.###."},
    {'h', "#....#....#.##.##..##...##...##...#"},
    {'i', "..#........##....#....#....#...###."},
    {'j', "...#.........##....#....#....##..#..##.."},
    {'k', "#....#....#..#.#.#..##...#.#..#..#."},
    {'l', ".##....#....#....#....#....#...###."},
    {'m', "..........##.#.#.#.##.#.##...##...#"},
    {'n', "..........#.##.##..##...##...##...#"},
    {'o', "...........###.#...##...##...#.###."},
    {'p', "..........####.#...##...#####.#....#...."},
    {'q', "...........#####...##...#.####....#....#"},
    {'r', "..........#.##.##..##....#....#...."},
    {'s', "...........###.#.....###.....#####."},
    {'t', ".#....#...###..#....#....#..#..##.."},
    {'u', "..........#...##...##...##..##.##.#"},
    {'v', "..........#...##...##...#.#.#...#.."},
    {'w', "..........#...##...##.#.##.#.#.#.#."},
    {'x', "..........#...#.#.#...#...#.#.#...#"},
    {'y', "..........#...##...##...#.####....#.###."},
    {'z', "..........#####...#...#...#...#####"},
    {'|', "..#....#....#....#....#....#....#.."},
};

// Anything the font lacks (other bytes, UTF-8 sequences) draws as this box so that it is visibly missing.
constexpr const char* kUnknownGlyph = "...........###..#.#..#.#..###......";

constexpr size_t const_strlen(const char* s) { return *s ? 1 + const_strlen(s + 1) : 0; }

constexpr bool font_well_formed() {
  for (const Glyph& g : kFont) {
    const size_t n = const_strlen(g.bits);
    if (n != 7 * kGlyphW && n != 8 * kGlyphW) return false;
  }
  return const_strlen(kUnknownGlyph) == 7 * kGlyphW;
}
static_assert(font_well_formed(), "every glyph must be 7 or 8 rows of 5 pixels");

const char* glyph_bits(char c) {
  for (const Glyph& g : kFont)
    if (g.c == c) return g.bits;
  return kUnknownGlyph;
}

// ---- drawing ------------------------------------------------------------------------------------------------------

using Rgb = unsigned char[3];
constexpr Rgb kBackground = {44, 46, 54};
constexpr Rgb kTextPlain = {225, 225, 225};
constexpr Rgb kTextSuccess = {110, 230, 110};
constexpr Rgb kTextFailure = {255, 110, 110};
constexpr Rgb kNonFinite = {255, 0, 255};

constexpr int kMaxScale = 64;
constexpr int kMaxCaptionLines = 3;
constexpr int kSheetMargin = 4, kPairGap = 2, kCaptionGap = 3, kGridGap = 2;
constexpr int64_t kMaxSheetPixels = int64_t{1} << 27;

struct Canvas {
  int width, height;
  std::vector<unsigned char> rgb;

  Canvas(int w, int h) : width(w), height(h), rgb(size_t(w) * size_t(h) * 3) {
    for (size_t i = 0; i < rgb.size(); i += 3) std::copy(kBackground, kBackground + 3, rgb.begin() + i);
  }

  // `image` is h x w floats, drawn with its top-left corner at (x0, y0), each pixel as s x s.
  void draw_image(int x0, int y0, const float* image, int w, int h, int s) {
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) {
        const float v = image[size_t(y) * w + x];
        unsigned char c[3];
        if (std::isfinite(v)) {
          const auto g = static_cast<unsigned char>(std::lround(std::clamp(v, 0.0f, 1.0f) * 255.0f));
          c[0] = c[1] = c[2] = g;
        } else {
          std::copy(kNonFinite, kNonFinite + 3, c);
        }
        for (int dy = 0; dy < s; ++dy) {
          unsigned char* row = &rgb[(size_t(y0 + y * s + dy) * width + x0 + x * s) * 3];
          for (int dx = 0; dx < s; ++dx) std::copy(c, c + 3, row + dx * 3);
        }
      }
  }
};

void check_scale_and_columns(const char* what, int columns, int scale) {
  if (columns < 1) throw InputError(std::string(what) + ": columns must be at least 1, got " + std::to_string(columns));
  if (scale < 1 || scale > kMaxScale)
    throw InputError(std::string(what) + ": scale must be 1.." + std::to_string(kMaxScale) + ", got " +
                     std::to_string(scale));
}

void check_sheet_size(const char* what, const std::string& path, int64_t w, int64_t h) {
  if (w > 65535 || h > 65535 || w * h > kMaxSheetPixels)
    throw InputError(std::string(what) + " " + path + " would be " + std::to_string(w) + "x" + std::to_string(h) +
                     " pixels; use fewer images, a smaller scale or a different column count");
}

// Splits at '\n', then wraps each paragraph at spaces to `max_chars` per line (a longer word is cut).
std::vector<std::string> wrap_caption(const std::string& text, size_t max_chars) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string paragraph = text.substr(start, end - start);
    std::string line;
    size_t i = 0;
    while (i < paragraph.size()) {
      while (i < paragraph.size() && paragraph[i] == ' ') ++i;
      size_t j = paragraph.find(' ', i);
      if (j == std::string::npos) j = paragraph.size();
      std::string word = paragraph.substr(i, j - i);
      i = j;
      if (word.empty()) break;
      const size_t need = line.empty() ? word.size() : line.size() + 1 + word.size();
      if (need <= max_chars) {
        line = line.empty() ? word : line + " " + word;
        continue;
      }
      if (!line.empty()) lines.push_back(line);
      while (word.size() > max_chars) {
        lines.push_back(word.substr(0, max_chars));
        word.erase(0, max_chars);
      }
      line = word;
    }
    if (!line.empty()) lines.push_back(line);
    start = end + 1;
  }
  return lines;
}

struct Caption {
  const unsigned char* color;
  std::vector<std::string> lines;
};

Caption parse_caption(const std::string& caption, size_t max_chars) {
  Caption c{kTextPlain, {}};
  std::string text = caption;
  if (!text.empty() && (text[0] == '+' || text[0] == '-')) {
    c.color = text[0] == '+' ? kTextSuccess : kTextFailure;
    const size_t first = text.find_first_not_of(' ', 1);
    text = first == std::string::npos ? "" : text.substr(first);
  }
  c.lines = wrap_caption(text, max_chars);
  if (c.lines.size() > size_t(kMaxCaptionLines)) c.lines.resize(kMaxCaptionLines);
  return c;
}

}  // namespace

int draw_text_rgb(std::vector<unsigned char>& rgb, int canvas_w, int canvas_h, int x, int y, const std::string& text,
                  const unsigned char color[3], int t) {
  for (char ch : text) {
    if ((static_cast<unsigned char>(ch) & 0xc0) == 0x80) continue;  // UTF-8 continuation: one box per character
    const char* bits = glyph_bits(ch);
    const int rows = static_cast<int>(const_strlen(bits)) / kGlyphW;
    for (int r = 0; r < rows && r < kGlyphRows; ++r)
      for (int col = 0; col < kGlyphW; ++col) {
        if (bits[r * kGlyphW + col] != '#') continue;
        for (int dy = 0; dy < t; ++dy)
          for (int dx = 0; dx < t; ++dx) {
            const int px = x + col * t + dx, py = y + r * t + dy;
            if (px < 0 || py < 0 || px >= canvas_w || py >= canvas_h) continue;
            std::copy(color, color + 3, rgb.begin() + (size_t(py) * canvas_w + px) * 3);
          }
      }
    x += kAdvance * t;
  }
  return x;
}

void write_contact_sheet(const std::string& path, const std::vector<SheetCell>& cells, int columns, int scale) {
  check_scale_and_columns("contact sheet", columns, scale);
  if (cells.empty()) throw InputError("contact sheet " + path + ": no images to show");
  int w = 0, h = 0;
  bool any_start = false;
  for (size_t i = 0; i < cells.size(); ++i) {
    const SheetCell& c = cells[i];
    if (!c.result || c.width <= 0 || c.height <= 0 || c.width > kMaxImageSide || c.height > kMaxImageSide)
      throw InternalError("contact sheet cell " + std::to_string(i) + " has no result image or is " +
                          std::to_string(c.width) + "x" + std::to_string(c.height));
    w = std::max(w, c.width);
    h = std::max(h, c.height);
    any_start = any_start || c.start;
  }
  const int t = std::max(1, scale / 3);
  const int slots = any_start ? 2 : 1;
  const int64_t cell_w = int64_t{slots} * w * scale + (slots - 1) * kPairGap;
  const size_t max_chars = static_cast<size_t>(std::max<int64_t>(1, cell_w / (kAdvance * t)));
  std::vector<Caption> captions;
  int lines = 0;
  for (const SheetCell& c : cells) {
    captions.push_back(parse_caption(c.caption, max_chars));
    lines = std::max(lines, static_cast<int>(captions.back().lines.size()));
  }
  const int64_t cell_h = int64_t{h} * scale + (lines > 0 ? kCaptionGap + lines * kLineHeight * t : 0);
  const int64_t cols = std::min<int64_t>(columns, static_cast<int64_t>(cells.size()));
  const int64_t rows = (static_cast<int64_t>(cells.size()) + cols - 1) / cols;
  const int64_t sheet_w = cols * cell_w + (cols + 1) * kSheetMargin;
  const int64_t sheet_h = rows * cell_h + (rows + 1) * kSheetMargin;
  check_sheet_size("contact sheet", path, sheet_w, sheet_h);

  Canvas canvas(static_cast<int>(sheet_w), static_cast<int>(sheet_h));
  for (size_t i = 0; i < cells.size(); ++i) {
    const SheetCell& c = cells[i];
    const int x0 = static_cast<int>(kSheetMargin + (int64_t(i) % cols) * (cell_w + kSheetMargin));
    const int y0 = static_cast<int>(kSheetMargin + (int64_t(i) / cols) * (cell_h + kSheetMargin));
    // Smaller images are centred in their W x H slot.
    const int ix = (w - c.width) * scale / 2, iy = (h - c.height) * scale / 2;
    if (c.start) canvas.draw_image(x0 + ix, y0 + iy, c.start, c.width, c.height, scale);
    const int result_x = x0 + (slots - 1) * (w * scale + kPairGap);
    canvas.draw_image(result_x + ix, y0 + iy, c.result, c.width, c.height, scale);
    int y = y0 + h * scale + kCaptionGap;
    for (const std::string& line : captions[i].lines) {
      draw_text_rgb(canvas.rgb, canvas.width, canvas.height, x0, y, line, captions[i].color, t);
      y += kLineHeight * t;
    }
  }
  write_png_rgb(path, canvas.width, canvas.height, canvas.rgb);
}

void write_image_grid(const std::string& path, const std::vector<const float*>& images, int width, int height,
                      int columns, int scale, const std::vector<std::string>& row_labels) {
  check_scale_and_columns("image grid", columns, scale);
  if (images.empty()) throw InputError("image grid " + path + ": no images to show");
  if (width <= 0 || height <= 0 || width > kMaxImageSide || height > kMaxImageSide)
    throw InternalError("image grid " + path + ": images are " + std::to_string(width) + "x" + std::to_string(height));
  const int t = std::max(1, scale / 3);
  const int64_t cols = std::min<int64_t>(columns, static_cast<int64_t>(images.size()));
  const int64_t rows = (static_cast<int64_t>(images.size()) + cols - 1) / cols;
  if (static_cast<int64_t>(row_labels.size()) > rows)
    throw InternalError("image grid " + path + ": " + std::to_string(row_labels.size()) + " row labels for " +
                        std::to_string(rows) + " rows");
  size_t label_chars = 0;
  for (const std::string& label : row_labels) label_chars = std::max(label_chars, label.size());
  const int64_t label_w = label_chars ? 2 * kGridGap + int64_t(label_chars) * kAdvance * t : 0;
  const int64_t tile_w = int64_t{width} * scale, tile_h = int64_t{height} * scale;
  const int64_t sheet_w = label_w + cols * tile_w + (cols + 1) * kGridGap;
  const int64_t sheet_h = rows * tile_h + (rows + 1) * kGridGap;
  check_sheet_size("image grid", path, sheet_w, sheet_h);

  Canvas canvas(static_cast<int>(sheet_w), static_cast<int>(sheet_h));
  for (size_t i = 0; i < images.size(); ++i) {
    if (!images[i]) continue;
    const int64_t x = label_w + kGridGap + (int64_t(i) % cols) * (tile_w + kGridGap);
    const int64_t y = kGridGap + (int64_t(i) / cols) * (tile_h + kGridGap);
    canvas.draw_image(static_cast<int>(x), static_cast<int>(y), images[i], width, height, scale);
  }
  for (size_t r = 0; r < row_labels.size(); ++r) {
    // Vertically centred on the row (glyph height 7 t).
    const int64_t y = kGridGap + int64_t(r) * (tile_h + kGridGap) + (tile_h - 7 * t) / 2;
    draw_text_rgb(canvas.rgb, canvas.width, canvas.height, kGridGap, static_cast<int>(y), row_labels[r], kTextPlain,
                  t);
  }
  write_png_rgb(path, canvas.width, canvas.height, canvas.rgb);
}

}  // namespace nudge
