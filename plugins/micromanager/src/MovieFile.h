// MovieFile: random access to the frames of an uncompressed little-endian uint16 movie.
//
// Three layouts are understood:
//  * TIFF / BigTIFF stacks with uncompressed 16-bit pages: what `rtsmlm simulate` writes
//    (ImageJ TIFF), what a live run records (BigTIFF) and what most acquisition software
//    saves; the page offsets are read from the IFD chain, so pages need not be contiguous;
//  * Picasso .raw: a sidecar <stem>.yaml next to the movie gives Width, Height and Frames
//    (what `rtsmlm` writes with output.raw_format = "raw", and what Picasso writes);
//  * a plain headerless stack, with width, height and (optionally) the frame count given by
//    the caller (the camera's MovieWidth / MovieHeight / MovieFrames properties).
//
// Movies up to kInMemoryBytes are read into memory when opened (a frame is then one memcpy);
// larger ones are read on demand with one positioned read per frame, at page-cache speed.

#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace rtsmlm {

class MovieFile {
public:
   static constexpr long long kInMemoryBytes = 512LL << 20;

   MovieFile() = default;
   ~MovieFile();
   MovieFile(const MovieFile&) = delete;
   MovieFile& operator=(const MovieFile&) = delete;

   // Open `path`. `width`/`height`/`frames` are used when no Picasso .yaml sidecar exists
   // (`frames` = 0 means "as many as the file holds"). Returns "" on success, else one
   // sentence naming the file and the problem; on failure the previous movie stays closed.
   std::string Open(const std::string& path, long width, long height, long frames);
   void Close();
   void Swap(MovieFile& other) noexcept;

   bool IsOpen() const { return file_ != nullptr; }
   const std::string& Path() const { return path_; }
   unsigned Width() const { return width_; }
   unsigned Height() const { return height_; }
   long Frames() const { return frames_; }

   // Copy frame `index` (0 <= index < Frames()) into `dst` (Width()*Height() pixels).
   // Returns false when the read fails (file truncated or removed while playing).
   bool ReadFrame(long index, std::uint16_t* dst);

private:
   std::string OpenTiff(std::FILE* f, const std::string& path);

   std::FILE* file_ = nullptr;
   long long dataOffset_ = 0;            // first frame of a contiguous movie
   std::vector<long long> pageOffsets_;  // per-frame offsets of a TIFF (empty: contiguous)
   std::vector<std::uint16_t> inMemory_; // all frames, when the movie is small enough
   std::string path_;
   unsigned width_ = 0;
   unsigned height_ = 0;
   long frames_ = 0;
};

// The Picasso sidecar of a movie: "<dir>/<stem>.yaml" for "<dir>/<stem>.raw".
std::string PicassoSidecarPath(const std::string& moviePath);

} // namespace rtsmlm
