// Pictures of results: a contact sheet of (start, result) image pairs with captions, and a plain labelled grid.
// Both are RGB PNGs written atomically. Pixel values are clamped to [0,1] and drawn as gray; a NaN or infinite pixel
// is drawn magenta so that a broken result cannot pass for a dark one. Text uses a built-in 5x7 pixel font
// (printable ASCII; anything else is drawn as a small box) in light colours on the dark sheet background.
#pragma once
#include <string>
#include <vector>

namespace nudge {

struct SheetCell {
  const float* start = nullptr;   // optional: null shows only the result (its slot stays empty)
  const float* result = nullptr;  // required
  int width = 0, height = 0;      // row-major [0,1] images of height*width floats
  // A leading '+' marks success (caption drawn green), '-' failure (red); the marker and the spaces after it are
  // not drawn. Otherwise light gray. '\n' starts a new line; long lines wrap at spaces, at most 3 lines are shown.
  std::string caption;
};

// Layout, with s = scale, t = max(1, s / 3) the text scale, W x H the largest cell image, n the cell count:
//   slots   = 2 if any cell has a start image, else 1
//   cell_w  = slots * W * s + (slots - 1) * 2            (start and result side by side, 2 px apart)
//   lines   = the most caption lines any cell needs after wrapping at floor(cell_w / (6 t)) characters, at most 3
//   cell_h  = H * s + (lines > 0 ? 3 + lines * 9 t : 0)  (3 px gap, then 9 t px per line)
//   cols    = min(columns, n), rows = ceil(n / cols)
//   sheet   = (cols * cell_w + (cols + 1) * 4) x (rows * cell_h + (rows + 1) * 4)   (4 px margins)
// Cells fill rows left to right. Throws InputError for columns < 1, scale outside 1..64, no cells, or a sheet over
// 2^27 pixels; InternalError for a cell without a result or with non-positive dimensions.
void write_contact_sheet(const std::string& path, const std::vector<SheetCell>& cells, int columns, int scale = 3);

// A plain grid of width x height images (null entries stay empty), e.g. class visualisations: 10 rows x K columns,
// row_labels[r] drawn left of row r. With L the longest label in characters (0 without labels), t as above:
//   label_w = L > 0 ? 4 + L * 6 t : 0
//   sheet   = (label_w + cols * width * s + (cols + 1) * 2) x (rows * height * s + (rows + 1) * 2)
// with cols = min(columns, images.size()) and rows = ceil(images.size() / cols). More labels than rows: InternalError.
void write_image_grid(const std::string& path, const std::vector<const float*>& images, int width, int height,
                      int columns, int scale = 3, const std::vector<std::string>& row_labels = {});

// The same text renderer, for other pictures: draws `text` into an RGB buffer of canvas_w x canvas_h at (x, y)
// (top-left of the first glyph), each font pixel as a t x t block, clipped to the buffer. Returns the x after the text.
int draw_text_rgb(std::vector<unsigned char>& rgb, int canvas_w, int canvas_h, int x, int y, const std::string& text,
                  const unsigned char color[3], int t = 1);

}  // namespace nudge
