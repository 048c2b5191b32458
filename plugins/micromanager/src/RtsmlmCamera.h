// RtsmlmCamera: a Micro-Manager camera that plays a movie or a live blinking simulation.
//
// Mode "Movie" plays a raw uint16 movie (Picasso .raw + .yaml, or a plain stack sized by the
// MovieWidth / MovieHeight / MovieFrames properties) frame by frame through Micro-Manager's
// sequence acquisition, one frame per Exposure (Exposure 0 = as fast as possible). Mode
// "Simulation" renders blinking emitters whose activation follows the Power of the laser named
// by LaserDevice, so closed-loop control can be exercised. Binning (sum of bin x bin blocks)
// and ROI (in binned pixels, as Micro-Manager defines it) apply in both modes.
//
// Every sequence frame carries metadata tags rtsmlm-CameraFrame (0-based count within the
// sequence), rtsmlm-MovieFrame (the movie frame shown, Movie mode), rtsmlm-LaserPower_mW (the
// power read for this frame) and rtsmlm-ActiveEmitters (Simulation mode).

#pragma once

#include "BlinkSimulator.h"
#include "MovieFile.h"

#include "DeviceBase.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace rtsmlm {

extern const char* const kCameraDeviceName;
class RtsmlmLaser;

class RtsmlmCamera : public CCameraBase<RtsmlmCamera> {
public:
   RtsmlmCamera();
   ~RtsmlmCamera() override;

   // MM::Device
   int Initialize() override;
   int Shutdown() override;
   void GetName(char* name) const override;
   bool Busy() override { return false; }

   // MM::Camera: image geometry and snaps
   int SnapImage() override;
   const unsigned char* GetImageBuffer() override;
   unsigned GetImageWidth() const override { return roiW_; }
   unsigned GetImageHeight() const override { return roiH_; }
   unsigned GetImageBytesPerPixel() const override { return 2; }
   unsigned GetBitDepth() const override { return 16; }
   long GetImageBufferSize() const override { return static_cast<long>(roiW_) * roiH_ * 2; }
   double GetExposure() const override { return exposure_ms_.load(); }
   void SetExposure(double exp_ms) override;
   int SetROI(unsigned x, unsigned y, unsigned xSize, unsigned ySize) override;
   int GetROI(unsigned& x, unsigned& y, unsigned& xSize, unsigned& ySize) override;
   int ClearROI() override;
   int GetBinning() const override { return binning_; }
   int SetBinning(int binSize) override;
   int IsExposureSequenceable(bool& seq) const override { seq = false; return DEVICE_OK; }

   // MM::Camera: sequence acquisition
   int StartSequenceAcquisition(long numImages, double intervalMs, bool stopOnOverflow) override;
   int StartSequenceAcquisition(double intervalMs) override;
   int StopSequenceAcquisition() override;
   bool IsCapturing() override { return capturing_.load(); }

private:
   enum class Mode { Simulation, Movie };

   // Property handlers.
   int OnMode(MM::PropertyBase* prop, MM::ActionType act);
   int OnMovieFile(MM::PropertyBase* prop, MM::ActionType act);
   int OnBinning(MM::PropertyBase* prop, MM::ActionType act);
   int OnExposure(MM::PropertyBase* prop, MM::ActionType act);
   // A numeric property feeding the simulation; `structural` ones (sensor size, emitter count,
   // seed) re-place the emitters and cannot change while capturing.
   void CreateSimulationProperty(const char* name, double value, double lo, double hi,
                                 bool integer, bool structural,
                                 std::function<void(BlinkParameters&, double)> apply);

   int Fail(int code, const std::string& message);
   int OpenMovie(const std::string& path);
   void ApplyGeometry();              // sensor size from mode, full ROI at current binning
   int PrepareFirstFrame();           // checks that a frame can be produced, resets the simulation
   RtsmlmLaser* FindLaser();
   // Render camera frame `k` into image_; fills `md`. Returns DEVICE_OK or an error code.
   int ProduceFrame(long k, double laserPower_mW, MM::CameraImageMetadata& md);
   void SequenceLoop(long numImages, bool stopOnOverflow);
   bool WaitUntil(std::chrono::steady_clock::time_point due);  // false when a stop was requested

   bool initialized_ = false;
   Mode mode_ = Mode::Simulation;
   MovieFile movie_;
   std::string moviePath_;
   long movieWidth_ = 0, movieHeight_ = 0, movieFrames_ = 0;
   std::atomic<bool> loop_{true};  // read when a sequence starts
   std::string laserLabel_ = "Laser";

   // Geometry (changed only while not capturing).
   unsigned sensorW_ = 256, sensorH_ = 256;
   int binning_ = 1;
   unsigned roiX_ = 0, roiY_ = 0, roiW_ = 256, roiH_ = 256;
   std::vector<std::uint16_t> sensor_;  // full-sensor frame
   std::vector<std::uint16_t> image_;   // binned, cropped frame handed to the core

   std::atomic<double> exposure_ms_{10.0};

   // Simulation: parameters edited by property handlers, picked up by the acquisition thread.
   std::mutex simMutex_;
   BlinkParameters simParams_;
   bool simNeedsReset_ = true;           // a structural parameter changed
   std::atomic<bool> simParamsChanged_{false};
   BlinkSimulator sim_;

   // Sequence acquisition.
   RtsmlmLaser* laser_ = nullptr;       // resolved when a sequence starts
   std::thread thread_;
   std::atomic<bool> capturing_{false};
   std::mutex stopMutex_;
   std::condition_variable stopCv_;
   bool stopRequested_ = false;
   std::atomic<long> framesProduced_{0};
   long snapCounter_ = 0;
   std::mutex errorMutex_;
   std::string lastError_;
};

} // namespace rtsmlm
