#include "RtsmlmCamera.h"

#include "RtsmlmLaser.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <sstream>

namespace rtsmlm {

const char* const kCameraDeviceName = "RtsmlmCamera";

namespace {

const char* const kModeSimulation = "Simulation";
const char* const kModeMovie = "Movie";

// Adapter-specific error codes; their text is set right before they are returned, so the
// message Micro-Manager shows names the file or value at fault.
constexpr int ERR_MOVIE = 20001;
constexpr int ERR_BUSY = 20002;
constexpr int ERR_ROI = 20003;
constexpr int ERR_READ = 20004;

} // namespace

RtsmlmCamera::RtsmlmCamera()
{
   // Pre-init: which laser the simulation listens to (its label in the configuration).
   CreateStringProperty("LaserDevice", laserLabel_.c_str(), false, nullptr, true);
}

RtsmlmCamera::~RtsmlmCamera()
{
   StopSequenceAcquisition();
}

void RtsmlmCamera::GetName(char* name) const
{
   CDeviceUtils::CopyLimitedString(name, kCameraDeviceName);
}

int RtsmlmCamera::Fail(int code, const std::string& message)
{
   {
      std::lock_guard<std::mutex> lock(errorMutex_);
      lastError_ = message;
   }
   SetErrorText(code, message.c_str());
   LogMessage(message, false);
   return code;
}

int RtsmlmCamera::Initialize()
{
   if (initialized_) return DEVICE_OK;
   char label[MM::MaxStrLength];
   if (GetProperty("LaserDevice", label) == DEVICE_OK) laserLabel_ = label;

   CreateStringProperty(MM::g_Keyword_Description,
      "rtsmlm camera: plays a raw uint16 movie or a live blinking simulation", true);

   CreateStringProperty("Mode", kModeSimulation, false,
      new CPropertyAction(this, &RtsmlmCamera::OnMode));
   AddAllowedValue("Mode", kModeSimulation);
   AddAllowedValue("Mode", kModeMovie);

   CreateStringProperty("MovieFile", "", false, new CPropertyAction(this, &RtsmlmCamera::OnMovieFile));
   // Geometry of a plain raw movie (ignored when a Picasso .yaml sidecar exists); set these
   // before MovieFile. MovieFrames 0 = as many frames as the file holds.
   auto movieDim = [this](const char* name, long* field) {
      CreateIntegerProperty(name, *field, false, new MM::ActionLambda(
         [this, field](MM::PropertyBase* prop, MM::ActionType act) {
            if (act == MM::BeforeGet) prop->Set(*field);
            else if (act == MM::AfterSet)
            {
               if (IsCapturing()) return Fail(ERR_BUSY, "movie geometry cannot change during acquisition");
               prop->Get(*field);
            }
            return DEVICE_OK;
         }));
      SetPropertyLimits(name, 0, 1 << 20);
   };
   movieDim("MovieWidth", &movieWidth_);
   movieDim("MovieHeight", &movieHeight_);
   movieDim("MovieFrames", &movieFrames_);

   CreateStringProperty("Loop", "Yes", false, new MM::ActionLambda(
      [this](MM::PropertyBase* prop, MM::ActionType act) {
         if (act == MM::BeforeGet) prop->Set(loop_ ? "Yes" : "No");
         else if (act == MM::AfterSet)
         {
            std::string v;
            prop->Get(v);
            loop_ = (v == "Yes");
         }
         return DEVICE_OK;
      }));
   AddAllowedValue("Loop", "Yes");
   AddAllowedValue("Loop", "No");

   CreateIntegerProperty(MM::g_Keyword_Binning, 1, false,
      new CPropertyAction(this, &RtsmlmCamera::OnBinning));
   AddAllowedValue(MM::g_Keyword_Binning, "1");
   AddAllowedValue(MM::g_Keyword_Binning, "2");
   AddAllowedValue(MM::g_Keyword_Binning, "4");

   CreateFloatProperty(MM::g_Keyword_Exposure, exposure_ms_.load(), false,
      new CPropertyAction(this, &RtsmlmCamera::OnExposure));
   SetPropertyLimits(MM::g_Keyword_Exposure, 0.0, 100000.0);

   CreateStringProperty(MM::g_Keyword_PixelType, "16bit", true);

   CreateIntegerProperty("FramesProduced", 0, true, new MM::ActionLambda(
      [this](MM::PropertyBase* prop, MM::ActionType act) {
         if (act == MM::BeforeGet) prop->Set(framesProduced_.load());
         return DEVICE_OK;
      }));

   // Python bindings of MMCore drop a device's error text from their exceptions; this read-only
   // property keeps the last message so a client can still say what went wrong.
   CreateStringProperty("LastError", "", true, new MM::ActionLambda(
      [this](MM::PropertyBase* prop, MM::ActionType act) {
         if (act == MM::BeforeGet)
         {
            std::lock_guard<std::mutex> lock(errorMutex_);
            prop->Set(lastError_.c_str());
         }
         return DEVICE_OK;
      }));

   // Camera model: what rtsmlm reads to convert ADU to photons. The simulation renders with
   // these values; in Movie mode set them to describe the camera that recorded the movie.
   CreateSimulationProperty("EMGain", simParams_.emGain, 1.0, 10000.0, false, false,
      [](BlinkParameters& p, double v) { p.emGain = v; });
   CreateSimulationProperty("Offset", simParams_.offsetAdu, 0.0, 65535.0, false, false,
      [](BlinkParameters& p, double v) { p.offsetAdu = v; });
   CreateSimulationProperty("ElectronsPerADU", simParams_.electronsPerAdu, 0.001, 10000.0, false, false,
      [](BlinkParameters& p, double v) { p.electronsPerAdu = v; });
   CreateSimulationProperty("ReadNoiseElectrons", simParams_.readNoiseElectrons, 0.0, 10000.0, false, false,
      [](BlinkParameters& p, double v) { p.readNoiseElectrons = v; });

   // Simulation.
   CreateSimulationProperty("SensorWidth", simParams_.sensorWidth, 8, 8192, true, true,
      [](BlinkParameters& p, double v) { p.sensorWidth = static_cast<unsigned>(v); });
   CreateSimulationProperty("SensorHeight", simParams_.sensorHeight, 8, 8192, true, true,
      [](BlinkParameters& p, double v) { p.sensorHeight = static_cast<unsigned>(v); });
   CreateSimulationProperty("EmitterCount", static_cast<double>(simParams_.emitterCount), 0, 10000000, true, true,
      [](BlinkParameters& p, double v) { p.emitterCount = static_cast<long>(v); });
   CreateSimulationProperty("Seed", static_cast<double>(simParams_.seed), 0, 2147483647, true, true,
      [](BlinkParameters& p, double v) { p.seed = static_cast<std::uint64_t>(v); });
   CreateSimulationProperty("ActivationPerMilliwatt", simParams_.activationPerMilliwatt, 0.0, 1.0, false, false,
      [](BlinkParameters& p, double v) { p.activationPerMilliwatt = v; });
   CreateSimulationProperty("MeanOnFrames", simParams_.meanOnFrames, 1.0, 10000.0, false, false,
      [](BlinkParameters& p, double v) { p.meanOnFrames = v; });
   CreateSimulationProperty("BleachProbability", simParams_.bleachProbability, 0.0, 1.0, false, false,
      [](BlinkParameters& p, double v) { p.bleachProbability = v; });
   CreateSimulationProperty("PhotonsPerFrame", simParams_.photonsPerFrame, 0.0, 1e7, false, false,
      [](BlinkParameters& p, double v) { p.photonsPerFrame = v; });
   CreateSimulationProperty("BackgroundPhotons", simParams_.backgroundPhotons, 0.0, 1e6, false, false,
      [](BlinkParameters& p, double v) { p.backgroundPhotons = v; });
   CreateSimulationProperty("PsfSigmaPixels", simParams_.psfSigmaPixels, 0.3, 7.0, false, false,
      [](BlinkParameters& p, double v) { p.psfSigmaPixels = v; });

   ApplyGeometry();
   initialized_ = true;
   return DEVICE_OK;
}

void RtsmlmCamera::CreateSimulationProperty(const char* name, double value, double lo, double hi,
   bool integer, bool structural, std::function<void(BlinkParameters&, double)> apply)
{
   auto* action = new MM::ActionLambda(
      [this, structural, apply](MM::PropertyBase* prop, MM::ActionType act) {
         if (act != MM::AfterSet) return DEVICE_OK;  // the property keeps its own value
         if (structural && IsCapturing())
            return Fail(ERR_BUSY, "the simulated sensor and its emitters cannot change during acquisition");
         double v = 0.0;
         prop->Get(v);
         {
            std::lock_guard<std::mutex> lock(simMutex_);
            apply(simParams_, v);
            if (structural) simNeedsReset_ = true;
         }
         simParamsChanged_.store(true);
         if (structural && mode_ == Mode::Simulation) ApplyGeometry();
         return DEVICE_OK;
      });
   if (integer)
      CreateIntegerProperty(name, static_cast<long>(value), false, action);
   else
      CreateFloatProperty(name, value, false, action);
   SetPropertyLimits(name, lo, hi);
}

int RtsmlmCamera::Shutdown()
{
   StopSequenceAcquisition();
   movie_.Close();
   initialized_ = false;
   return DEVICE_OK;
}

// ---------------------------------------------------------------------------------------------
// Property handlers

int RtsmlmCamera::OnMode(MM::PropertyBase* prop, MM::ActionType act)
{
   if (act == MM::BeforeGet)
      prop->Set(mode_ == Mode::Movie ? kModeMovie : kModeSimulation);
   else if (act == MM::AfterSet)
   {
      if (IsCapturing()) return Fail(ERR_BUSY, "Mode cannot change during acquisition");
      std::string v;
      prop->Get(v);
      mode_ = (v == kModeMovie) ? Mode::Movie : Mode::Simulation;
      ApplyGeometry();
   }
   return DEVICE_OK;
}

int RtsmlmCamera::OnMovieFile(MM::PropertyBase* prop, MM::ActionType act)
{
   if (act == MM::BeforeGet)
      prop->Set(moviePath_.c_str());
   else if (act == MM::AfterSet)
   {
      if (IsCapturing()) return Fail(ERR_BUSY, "MovieFile cannot change during acquisition");
      std::string path;
      prop->Get(path);
      int ret = OpenMovie(path);
      if (ret != DEVICE_OK)
      {
         prop->Set(moviePath_.c_str());  // keep showing the movie that is still loaded
         return ret;
      }
   }
   return DEVICE_OK;
}

int RtsmlmCamera::OpenMovie(const std::string& path)
{
   if (path.empty())
   {
      movie_.Close();
      moviePath_.clear();
      ApplyGeometry();
      return DEVICE_OK;
   }
   // Open into a fresh object so a bad file leaves the loaded movie playable.
   MovieFile candidate;
   std::string err = candidate.Open(path, movieWidth_, movieHeight_, movieFrames_);
   if (!err.empty()) return Fail(ERR_MOVIE, err);
   movie_.Swap(candidate);
   moviePath_ = path;
   ApplyGeometry();
   return DEVICE_OK;
}

int RtsmlmCamera::OnBinning(MM::PropertyBase* prop, MM::ActionType act)
{
   if (act == MM::BeforeGet)
      prop->Set(static_cast<long>(binning_));
   else if (act == MM::AfterSet)
   {
      long b = 1;
      prop->Get(b);
      return SetBinning(static_cast<int>(b));
   }
   return DEVICE_OK;
}

int RtsmlmCamera::SetBinning(int binSize)
{
   if (binSize != 1 && binSize != 2 && binSize != 4)
   {
      std::ostringstream msg;
      msg << "Binning " << binSize << " is not supported; use 1, 2 or 4";
      return Fail(ERR_ROI, msg.str());
   }
   if (IsCapturing()) return Fail(ERR_BUSY, "Binning cannot change during acquisition");
   binning_ = binSize;
   ApplyGeometry();  // a binning change resets the ROI, as on most real cameras
   return DEVICE_OK;
}

int RtsmlmCamera::OnExposure(MM::PropertyBase* prop, MM::ActionType act)
{
   if (act == MM::BeforeGet)
      prop->Set(exposure_ms_.load());
   else if (act == MM::AfterSet)
   {
      double v = 0.0;
      prop->Get(v);
      exposure_ms_.store(v);  // live: the acquisition thread paces the next frame with it
   }
   return DEVICE_OK;
}

void RtsmlmCamera::SetExposure(double exp_ms)
{
   SetProperty(MM::g_Keyword_Exposure, CDeviceUtils::ConvertToString(exp_ms));
   GetCoreCallback()->OnExposureChanged(this, exp_ms);
}

// ---------------------------------------------------------------------------------------------
// Geometry

void RtsmlmCamera::ApplyGeometry()
{
   if (mode_ == Mode::Movie && movie_.IsOpen())
   {
      sensorW_ = movie_.Width();
      sensorH_ = movie_.Height();
   }
   else
   {
      std::lock_guard<std::mutex> lock(simMutex_);
      sensorW_ = simParams_.sensorWidth;
      sensorH_ = simParams_.sensorHeight;
   }
   roiX_ = roiY_ = 0;
   roiW_ = std::max(1u, sensorW_ / binning_);
   roiH_ = std::max(1u, sensorH_ / binning_);
   sensor_.assign(static_cast<std::size_t>(sensorW_) * sensorH_, 0);
   image_.assign(static_cast<std::size_t>(roiW_) * roiH_, 0);
}

int RtsmlmCamera::SetROI(unsigned x, unsigned y, unsigned xSize, unsigned ySize)
{
   if (IsCapturing()) return Fail(ERR_BUSY, "the ROI cannot change during acquisition");
   if (xSize == 0 || ySize == 0) return ClearROI();
   const unsigned fullW = sensorW_ / binning_, fullH = sensorH_ / binning_;
   if (x + xSize > fullW || y + ySize > fullH)
   {
      std::ostringstream msg;
      msg << "ROI x=" << x << " y=" << y << " width=" << xSize << " height=" << ySize
          << " does not fit the " << fullW << "x" << fullH << " (binned) sensor";
      return Fail(ERR_ROI, msg.str());
   }
   roiX_ = x;
   roiY_ = y;
   roiW_ = xSize;
   roiH_ = ySize;
   image_.assign(static_cast<std::size_t>(roiW_) * roiH_, 0);
   return DEVICE_OK;
}

int RtsmlmCamera::GetROI(unsigned& x, unsigned& y, unsigned& xSize, unsigned& ySize)
{
   x = roiX_;
   y = roiY_;
   xSize = roiW_;
   ySize = roiH_;
   return DEVICE_OK;
}

int RtsmlmCamera::ClearROI()
{
   if (IsCapturing()) return Fail(ERR_BUSY, "the ROI cannot change during acquisition");
   ApplyGeometry();
   return DEVICE_OK;
}

// ---------------------------------------------------------------------------------------------
// Frame production

RtsmlmLaser* RtsmlmCamera::FindLaser()
{
   MM::Device* dev = GetDevice(laserLabel_.c_str());
   return dev ? dynamic_cast<RtsmlmLaser*>(dev) : nullptr;
}

int RtsmlmCamera::PrepareFirstFrame()
{
   if (mode_ == Mode::Movie)
   {
      if (!movie_.IsOpen())
         return Fail(ERR_MOVIE, "Mode is Movie but no movie is loaded; set the camera's MovieFile property");
      return DEVICE_OK;
   }
   std::lock_guard<std::mutex> lock(simMutex_);
   if (simNeedsReset_)
   {
      sim_.Reset(simParams_);
      simNeedsReset_ = false;
   }
   return DEVICE_OK;
}

int RtsmlmCamera::ProduceFrame(long k, double laserPower_mW, MM::CameraImageMetadata& md)
{
   md.AddTag("rtsmlm-CameraFrame", k);
   md.AddTag("rtsmlm-LaserPower_mW", laserPower_mW);
   const unsigned b = static_cast<unsigned>(binning_);
   const bool fullFrame = (b == 1 && roiW_ == sensorW_ && roiH_ == sensorH_);
   // Without binning or ROI the frame is produced straight into the buffer handed to the core.
   std::uint16_t* const target = fullFrame ? image_.data() : sensor_.data();
   if (mode_ == Mode::Movie)
   {
      const long movieFrame = k % movie_.Frames();
      if (!movie_.ReadFrame(movieFrame, target))
      {
         std::ostringstream msg;
         msg << "frame " << movieFrame << " of movie " << movie_.Path() << " could not be read";
         return Fail(ERR_READ, msg.str());
      }
      md.AddTag("rtsmlm-MovieFrame", movieFrame);
   }
   else
   {
      if (simParamsChanged_.exchange(false))
      {
         std::lock_guard<std::mutex> lock(simMutex_);
         if (simNeedsReset_)
         {
            sim_.Reset(simParams_);
            simNeedsReset_ = false;
         }
         else
            sim_.UpdateLive(simParams_);
      }
      md.AddTag("rtsmlm-ActiveEmitters", sim_.RenderFrame(laserPower_mW, target));
   }
   if (fullFrame) return DEVICE_OK;

   for (unsigned r = 0; r < roiH_; ++r)
   {
      std::uint16_t* out = &image_[static_cast<std::size_t>(r) * roiW_];
      for (unsigned c = 0; c < roiW_; ++c)
      {
         std::uint32_t sum = 0;
         for (unsigned i = 0; i < b; ++i)
         {
            const std::uint16_t* in =
               &sensor_[static_cast<std::size_t>((roiY_ + r) * b + i) * sensorW_ + (roiX_ + c) * b];
            for (unsigned j = 0; j < b; ++j) sum += in[j];
         }
         out[c] = static_cast<std::uint16_t>(std::min<std::uint32_t>(sum, 65535u));
      }
   }
   return DEVICE_OK;
}

int RtsmlmCamera::SnapImage()
{
   if (IsCapturing()) return DEVICE_CAMERA_BUSY_ACQUIRING;
   int ret = PrepareFirstFrame();
   if (ret != DEVICE_OK) return ret;
   const auto due = std::chrono::steady_clock::now() +
      std::chrono::duration<double, std::milli>(exposure_ms_.load());
   RtsmlmLaser* laser = FindLaser();
   MM::CameraImageMetadata md;
   ret = ProduceFrame(snapCounter_++, laser ? laser->PowerMilliwatts() : 0.0, md);
   std::this_thread::sleep_until(due);  // a snap takes one exposure, as on a real camera
   return ret;
}

const unsigned char* RtsmlmCamera::GetImageBuffer()
{
   return reinterpret_cast<const unsigned char*>(image_.data());
}

// ---------------------------------------------------------------------------------------------
// Sequence acquisition

int RtsmlmCamera::StartSequenceAcquisition(double /*intervalMs*/)
{
   return StartSequenceAcquisition(LONG_MAX, 0.0, false);
}

int RtsmlmCamera::StartSequenceAcquisition(long numImages, double /*intervalMs*/, bool stopOnOverflow)
{
   if (IsCapturing()) return DEVICE_CAMERA_BUSY_ACQUIRING;
   if (thread_.joinable()) thread_.join();  // a finished sequence (movie ended, count reached)
   int ret = PrepareFirstFrame();
   if (ret != DEVICE_OK) return ret;
   laser_ = FindLaser();
   ret = GetCoreCallback()->PrepareForAcq(this);
   if (ret != DEVICE_OK) return ret;
   {
      std::lock_guard<std::mutex> lock(stopMutex_);
      stopRequested_ = false;
   }
   framesProduced_.store(0);
   capturing_.store(true);
   thread_ = std::thread(&RtsmlmCamera::SequenceLoop, this, numImages, stopOnOverflow);
   return DEVICE_OK;
}

int RtsmlmCamera::StopSequenceAcquisition()
{
   {
      std::lock_guard<std::mutex> lock(stopMutex_);
      stopRequested_ = true;
   }
   stopCv_.notify_all();
   if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id())
      thread_.join();
   return DEVICE_OK;
}

bool RtsmlmCamera::WaitUntil(std::chrono::steady_clock::time_point due)
{
   std::unique_lock<std::mutex> lock(stopMutex_);
   if (std::chrono::steady_clock::now() < due)
      stopCv_.wait_until(lock, due, [this] { return stopRequested_; });
   return !stopRequested_;
}

void RtsmlmCamera::SequenceLoop(long numImages, bool stopOnOverflow)
{
   using clock = std::chrono::steady_clock;
   RtsmlmLaser* const laser = laser_;
   const long movieFrames = (mode_ == Mode::Movie) ? movie_.Frames() : 0;
   if (mode_ == Mode::Movie && !loop_) numImages = std::min(numImages, movieFrames);

   // Frames are due on a fixed schedule (start + k * exposure), like a free-running camera;
   // when the thread falls more than a frame behind it restarts the schedule instead of
   // bursting to catch up.
   auto due = clock::now();
   int status = DEVICE_OK;
   MM::CameraImageMetadata md;
   for (long k = 0; k < numImages; ++k)
   {
      const auto period = std::chrono::duration_cast<clock::duration>(
         std::chrono::duration<double, std::milli>(exposure_ms_.load()));
      due += period;
      const auto now = clock::now();
      if (now > due + period) due = now;
      if (!WaitUntil(due)) break;

      md.Clear();
      status = ProduceFrame(k, laser ? laser->PowerMilliwatts() : 0.0, md);
      if (status != DEVICE_OK) break;
      status = GetCoreCallback()->InsertImage(this, reinterpret_cast<const unsigned char*>(image_.data()),
         roiW_, roiH_, 2, md.Serialize());
      framesProduced_.fetch_add(1);
      if (status == DEVICE_BUFFER_OVERFLOW && !stopOnOverflow)
         status = DEVICE_OK;  // the frame is lost; MMCore's image numbers show the gap
      if (status != DEVICE_OK) break;
   }
   capturing_.store(false);
   GetCoreCallback()->AcqFinished(this, status);
}

} // namespace rtsmlm
