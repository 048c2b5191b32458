#include "MovieFile.h"

#include <cctype>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <utility>

#ifndef _WIN32
#include <unistd.h>
#endif

namespace rtsmlm {

namespace {

std::string Trim(const std::string& s)
{
   std::size_t b = 0, e = s.size();
   while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
   while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
   std::string out = s.substr(b, e - b);
   // YAML may quote scalars.
   if (out.size() >= 2 && (out.front() == '\'' || out.front() == '"') && out.back() == out.front())
      out = out.substr(1, out.size() - 2);
   return out;
}

// Picasso's info file is a YAML document (or several, separated by "---") of "Key: value"
// lines; only the first document describes the movie. A full YAML parser is not needed.
std::map<std::string, std::string> ReadYamlScalars(std::ifstream& in)
{
   std::map<std::string, std::string> out;
   std::string line;
   bool seenContent = false;
   while (std::getline(in, line))
   {
      if (line.rfind("---", 0) == 0)
      {
         if (seenContent) break;
         continue;
      }
      std::size_t colon = line.find(':');
      if (colon == std::string::npos || line.empty() || line[0] == ' ' || line[0] == '#')
         continue;
      out[Trim(line.substr(0, colon))] = Trim(line.substr(colon + 1));
      seenContent = true;
   }
   return out;
}

bool ParseLong(const std::string& s, long& v)
{
   std::istringstream is(s);
   is >> v;
   return !is.fail() && is.eof();
}

long long FileSize(std::FILE* f)
{
   if (fseeko(f, 0, SEEK_END) != 0) return -1;
   return static_cast<long long>(ftello(f));
}

bool ReadAt(std::FILE* f, long long offset, void* dst, std::size_t bytes)
{
#ifndef _WIN32
   // One positioned read: no seek, no stdio buffer in between (and safe with a shared offset).
   char* out = static_cast<char*>(dst);
   while (bytes > 0)
   {
      const ssize_t got = ::pread(fileno(f), out, bytes, static_cast<off_t>(offset));
      if (got <= 0) return false;
      out += got;
      offset += got;
      bytes -= static_cast<std::size_t>(got);
   }
   return true;
#else
   return fseeko(f, static_cast<off_t>(offset), SEEK_SET) == 0 && std::fread(dst, 1, bytes, f) == bytes;
#endif
}

// Little-endian integers from a byte buffer (TIFF "II" files; the only byte order accepted).
std::uint64_t Le(const unsigned char* p, int bytes)
{
   std::uint64_t v = 0;
   for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
   return v;
}

// One TIFF directory: the tags needed to locate 16-bit grayscale pages.
struct TiffPage {
   std::uint64_t width = 0, height = 0, bits = 0, compression = 1, samples = 1, sampleFormat = 1;
   std::vector<std::uint64_t> stripOffsets, stripBytes;
   std::string description;
   std::uint64_t next = 0;
};

class TiffReader {
public:
   TiffReader(std::FILE* f, bool big) : f_(f), big_(big) {}

   // Read the directory at `offset`; `withDescription` also loads ImageDescription.
   bool ReadPage(std::uint64_t offset, bool withDescription, TiffPage& page)
   {
      const int countBytes = big_ ? 8 : 2, entryBytes = big_ ? 20 : 12, nextBytes = big_ ? 8 : 4;
      unsigned char buf[8];
      if (!ReadAt(f_, static_cast<long long>(offset), buf, countBytes)) return false;
      const std::uint64_t n = Le(buf, countBytes);
      if (n == 0 || n > 4096) return false;
      std::vector<unsigned char> entries(static_cast<std::size_t>(n) * entryBytes + nextBytes);
      if (!ReadAt(f_, static_cast<long long>(offset + countBytes), entries.data(), entries.size())) return false;
      for (std::uint64_t i = 0; i < n; ++i)
      {
         const unsigned char* e = &entries[static_cast<std::size_t>(i) * entryBytes];
         const unsigned tag = static_cast<unsigned>(Le(e, 2));
         const unsigned type = static_cast<unsigned>(Le(e + 2, 2));
         const std::uint64_t count = Le(e + 4, big_ ? 8 : 4);
         const unsigned char* field = e + (big_ ? 12 : 8);
         switch (tag)
         {
            case 256: page.width = Scalar(type, count, field); break;
            case 257: page.height = Scalar(type, count, field); break;
            case 258: page.bits = Scalar(type, count, field); break;
            case 259: page.compression = Scalar(type, count, field); break;
            case 277: page.samples = Scalar(type, count, field); break;
            case 339: page.sampleFormat = Scalar(type, count, field); break;
            case 273: if (!Array(type, count, field, page.stripOffsets)) return false; break;
            case 279: if (!Array(type, count, field, page.stripBytes)) return false; break;
            case 270:
               if (withDescription && type == 2 && count > 0 && count < (1u << 24))
               {
                  std::string text(static_cast<std::size_t>(count), '\0');
                  const std::uint64_t inlineBytes = big_ ? 8 : 4;
                  if (count <= inlineBytes) std::memcpy(&text[0], field, static_cast<std::size_t>(count));
                  else if (!ReadAt(f_, static_cast<long long>(Le(field, big_ ? 8 : 4)), &text[0], text.size()))
                     return false;
                  page.description = text.c_str();
               }
               break;
            default: break;
         }
      }
      page.next = Le(&entries[static_cast<std::size_t>(n) * entryBytes], nextBytes);
      return true;
   }

private:
   static int TypeBytes(unsigned type)
   {
      switch (type) { case 3: return 2; case 4: return 4; case 16: return 8; default: return 0; }
   }

   std::uint64_t Scalar(unsigned type, std::uint64_t count, const unsigned char* field) const
   {
      const int b = TypeBytes(type);
      return (b == 0 || count == 0) ? 0 : Le(field, b);
   }

   bool Array(unsigned type, std::uint64_t count, const unsigned char* field, std::vector<std::uint64_t>& out)
   {
      const int b = TypeBytes(type);
      if (b == 0 || count == 0 || count > (1u << 24)) return false;
      std::vector<unsigned char> raw(static_cast<std::size_t>(count) * b);
      if (raw.size() <= static_cast<std::size_t>(big_ ? 8 : 4))
         std::memcpy(raw.data(), field, raw.size());
      else if (!ReadAt(f_, static_cast<long long>(Le(field, big_ ? 8 : 4)), raw.data(), raw.size()))
         return false;
      out.resize(static_cast<std::size_t>(count));
      for (std::size_t i = 0; i < out.size(); ++i) out[i] = Le(&raw[i * b], b);
      return true;
   }

   std::FILE* f_;
   bool big_;
};

// "images=N" of an ImageJ description (ImageJ writes one directory for files over 4 GB and
// the remaining pages contiguously after the first).
long ImageJImages(const std::string& description)
{
   const std::string key = "images=";
   std::size_t at = description.find(key);
   if (at == std::string::npos) return 0;
   return std::atol(description.c_str() + at + key.size());
}

} // namespace

std::string PicassoSidecarPath(const std::string& moviePath)
{
   std::size_t slash = moviePath.find_last_of("/\\");
   std::size_t dot = moviePath.find_last_of('.');
   if (dot == std::string::npos || (slash != std::string::npos && dot < slash))
      return moviePath + ".yaml";
   return moviePath.substr(0, dot) + ".yaml";
}

MovieFile::~MovieFile() { Close(); }

void MovieFile::Close()
{
   if (file_) std::fclose(file_);
   file_ = nullptr;
   path_.clear();
   width_ = height_ = 0;
   frames_ = 0;
   dataOffset_ = 0;
   pageOffsets_.clear();
   inMemory_.clear();
   inMemory_.shrink_to_fit();
}

void MovieFile::Swap(MovieFile& other) noexcept
{
   std::swap(file_, other.file_);
   std::swap(path_, other.path_);
   std::swap(width_, other.width_);
   std::swap(height_, other.height_);
   std::swap(frames_, other.frames_);
   std::swap(dataOffset_, other.dataOffset_);
   std::swap(pageOffsets_, other.pageOffsets_);
   std::swap(inMemory_, other.inMemory_);
}

std::string MovieFile::OpenTiff(std::FILE* f, const std::string& path)
{
   unsigned char header[16];
   if (!ReadAt(f, 0, header, sizeof header)) return "TIFF file " + path + " is too short";
   if (header[0] != 'I' || header[1] != 'I')
      return "TIFF file " + path + " is big-endian; only little-endian (II) TIFFs can be played";
   const unsigned version = static_cast<unsigned>(Le(header + 2, 2));
   const bool big = (version == 43);
   if (version != 42 && !big) return "file " + path + " is not a TIFF (bad version field)";
   TiffReader reader(f, big);
   std::uint64_t ifd = big ? Le(header + 8, 8) : Le(header + 4, 4);

   TiffPage first;
   if (!reader.ReadPage(ifd, true, first)) return "TIFF file " + path + " has an unreadable first directory";
   if (first.bits != 16 || first.samples != 1 || first.compression != 1 ||
       (first.sampleFormat != 1 && first.sampleFormat != 0))
   {
      std::ostringstream msg;
      msg << "TIFF file " << path << " has " << first.bits << "-bit, " << first.samples
          << "-sample pages with compression " << first.compression
          << "; only uncompressed 16-bit unsigned grayscale can be played";
      return msg.str();
   }
   width_ = static_cast<unsigned>(first.width);
   height_ = static_cast<unsigned>(first.height);
   const std::uint64_t frameBytes = first.width * first.height * 2;

   // Each page must be one contiguous run of bytes (one strip, or strips back to back).
   auto pageStart = [&](const TiffPage& p, std::uint64_t& start) {
      if (p.stripOffsets.empty() || p.stripOffsets.size() != p.stripBytes.size()) return false;
      if (p.width != first.width || p.height != first.height || p.bits != 16 || p.compression != 1) return false;
      std::uint64_t expect = p.stripOffsets[0], total = 0;
      for (std::size_t i = 0; i < p.stripOffsets.size(); ++i)
      {
         if (p.stripOffsets[i] != expect) return false;
         expect += p.stripBytes[i];
         total += p.stripBytes[i];
      }
      start = p.stripOffsets[0];
      return total >= frameBytes;
   };
   std::uint64_t start = 0;
   if (!pageStart(first, start))
      return "TIFF file " + path + " stores its first page in non-contiguous strips";
   pageOffsets_.push_back(static_cast<long long>(start));

   const long imagejImages = ImageJImages(first.description);
   for (ifd = first.next; ifd != 0; )
   {
      TiffPage page;
      if (!reader.ReadPage(ifd, false, page) || !pageStart(page, start))
      {
         std::ostringstream msg;
         msg << "TIFF file " << path << ": page " << pageOffsets_.size()
             << " is unreadable or differs from the first page";
         return msg.str();
      }
      pageOffsets_.push_back(static_cast<long long>(start));
      ifd = page.next;
      if (pageOffsets_.size() > (1u << 26)) return "TIFF file " + path + " has a directory loop";
   }
   if (pageOffsets_.size() == 1 && imagejImages > 1)
   {
      dataOffset_ = pageOffsets_[0];  // ImageJ > 4 GB: contiguous pages after the only directory
      pageOffsets_.clear();
      frames_ = imagejImages;
   }
   else
      frames_ = static_cast<long>(pageOffsets_.size());
   return "";
}

std::string MovieFile::Open(const std::string& path, long width, long height, long frames)
{
   Close();
   std::FILE* f = std::fopen(path.c_str(), "rb");
   if (!f)
      return "movie file " + path + " cannot be opened for reading";
   const long long bytes = FileSize(f);
   if (bytes < 0)
   {
      std::fclose(f);
      return "movie file " + path + " is not seekable";
   }

   unsigned char magic[4] = {0, 0, 0, 0};
   const bool isTiff = ReadAt(f, 0, magic, 4) &&
      ((magic[0] == 'I' && magic[1] == 'I') || (magic[0] == 'M' && magic[1] == 'M')) &&
      (magic[2] == 42 || magic[2] == 43 || magic[3] == 42 || magic[3] == 43);
   std::string err;
   if (isTiff)
   {
      err = OpenTiff(f, path);
   }
   else
   {
      const std::string sidecar = PicassoSidecarPath(path);
      std::ifstream yaml(sidecar);
      if (yaml)
      {
         auto info = ReadYamlScalars(yaml);
         if (!ParseLong(info["Width"], width) || !ParseLong(info["Height"], height) ||
             !ParseLong(info["Frames"], frames))
            err = "movie info file " + sidecar + " lacks integer Width, Height and Frames entries";
         auto dtype = info.find("Data Type");
         if (err.empty() && dtype != info.end() && dtype->second != "uint16" && dtype->second != "<u2")
            err = "movie info file " + sidecar + " says Data Type " + dtype->second +
                  "; only uint16 movies can be played";
         auto order = info.find("Byte Order");
         if (err.empty() && order != info.end() && order->second != "<" && order->second != "little" &&
             order->second != "=")
            err = "movie info file " + sidecar + " says Byte Order " + order->second +
                  "; only little-endian movies can be played";
      }
      else if (width <= 0 || height <= 0)
         err = "movie " + path + " is not a TIFF and has no " + sidecar +
               " sidecar; set the camera's MovieWidth and MovieHeight properties (both > 0)";
      if (err.empty())
      {
         width_ = static_cast<unsigned>(width);
         height_ = static_cast<unsigned>(height);
         const long long available = bytes / (static_cast<long long>(width) * height * 2);
         frames_ = frames > 0 ? frames : static_cast<long>(available);
      }
   }
   if (err.empty())
   {
      // Every frame must lie inside the file (a truncated recording is refused up front).
      const long long frameBytes = static_cast<long long>(width_) * height_ * 2;
      const long long last = pageOffsets_.empty() ? dataOffset_ + frames_ * frameBytes
                                                  : pageOffsets_.back() + frameBytes;
      if (frames_ <= 0 || last > bytes)
      {
         std::ostringstream msg;
         msg << "movie file " << path << " holds " << bytes << " bytes, too few for "
             << (frames_ > 0 ? frames_ : 1) << " frame(s) of " << width_ << "x" << height_ << " uint16";
         err = msg.str();
      }
   }
   if (!err.empty())
   {
      std::fclose(f);
      Close();
      return err;
   }
   file_ = f;
   path_ = path;
   const std::size_t pixels = static_cast<std::size_t>(width_) * height_;
   if (static_cast<long long>(pixels) * 2 * frames_ <= kInMemoryBytes)
   {
      inMemory_.resize(pixels * static_cast<std::size_t>(frames_));
      for (long k = 0; k < frames_; ++k)
      {
         const long long offset = pageOffsets_.empty()
            ? dataOffset_ + static_cast<long long>(k) * static_cast<long long>(pixels) * 2
            : pageOffsets_[static_cast<std::size_t>(k)];
         if (!ReadAt(file_, offset, &inMemory_[pixels * static_cast<std::size_t>(k)], pixels * 2))
         {
            Close();
            return "movie file " + path + " could not be read";
         }
      }
   }
   return "";
}

bool MovieFile::ReadFrame(long index, std::uint16_t* dst)
{
   if (!file_ || index < 0 || index >= frames_) return false;
   const std::size_t pixels = static_cast<std::size_t>(width_) * height_;
   if (!inMemory_.empty())
   {
      std::memcpy(dst, &inMemory_[pixels * static_cast<std::size_t>(index)], pixels * 2);
      return true;
   }
   const long long offset = pageOffsets_.empty()
      ? dataOffset_ + static_cast<long long>(index) * static_cast<long long>(pixels) * 2
      : pageOffsets_[static_cast<std::size_t>(index)];
   // Pixels are little-endian on disk; every platform Micro-Manager runs on is little-endian.
   return ReadAt(file_, offset, dst, pixels * 2);
}

} // namespace rtsmlm
